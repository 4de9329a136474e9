"""Coinbase's request signature: a fresh JWT for every request (CDP API keys), valid 120 s,
naming the request (``uri = "METHOD host/path"``), signed with the key's private key: ES256 for
an EC key in PEM, EdDSA for an Ed25519 key given as base64."""

from __future__ import annotations

import base64
import binascii
import secrets
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from workers.domain.venue import VenueAuthFailed

TOKEN_LIFETIME_S = 120


class Signer:
    def __init__(self, key_name: str, private_key: str) -> None:
        self._key_name = key_name
        self._key, self._algorithm = _load(private_key)

    def token(self, method: str, host: str, path: str, now: float | None = None) -> str:
        """For one REST request: the token names it."""
        return self._encode({"uri": f"{method} {host}{path}"}, now)

    def stream_token(self, now: float | None = None) -> str:
        """For subscribing to the websocket channels: no request to name."""
        return self._encode({}, now)

    def _encode(self, extra: dict[str, str], now: float | None) -> str:
        issued = int(time.time() if now is None else now)
        claims = {"sub": self._key_name, "iss": "cdp", "nbf": issued, "exp": issued + TOKEN_LIFETIME_S, **extra}
        headers = {"kid": self._key_name, "nonce": secrets.token_hex()}
        return jwt.encode(claims, self._key, algorithm=self._algorithm, headers=headers)


def _load(private_key: str) -> tuple[ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, str]:
    """The key and its algorithm. A key that cannot be read is refused without quoting it."""
    text = private_key.strip().replace("\\n", "\n")
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            raw = base64.b64decode("".join(text.split()), validate=True)
            if len(raw) not in (32, 64):
                raise ValueError("an Ed25519 key is 32 or 64 bytes")
            key = ed25519.Ed25519PrivateKey.from_private_bytes(raw[:32])
    except (ValueError, TypeError, binascii.Error):
        raise VenueAuthFailed(
            "coinbase: the api_secret is neither an EC private key in PEM nor a base64 Ed25519 key"
        ) from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key, "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key, "ES256"
    raise VenueAuthFailed(f"coinbase: unsupported key type {type(key).__name__} (EC P-256 or Ed25519)")
