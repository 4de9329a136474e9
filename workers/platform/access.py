"""How a process proves who it is to NATS: a user and a password read from a file only its
owner can read (``MBX_NATS_USER``, ``MBX_NATS_PASSWORD_FILE``), a private reply inbox per user,
and TLS verified against ``MBX_NATS_CA_FILE``. Nothing set: no authentication, no TLS (the
embedded single-node start)."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path
from typing import Any

from workers.domain.config import ConfigError
from workers.platform.settings import Settings


def inbox_prefix(user: str) -> str:
    """The reply inbox of ``user``: its permissions allow reading replies here and nowhere else."""
    return f"_INBOX_{user.replace('-', '_')}"


def read_secret(path: Path, what: str) -> str:
    """A secret from a file only its owner can read; a clear error otherwise (never the secret)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path} ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{what}: {path} can be read by others; make it private (chmod 600 {path})")
    if not text:
        raise ConfigError(f"{what}: {path} is empty")
    return text


def with_access(settings: Settings, access: dict[str, str]) -> Settings:
    """``settings`` connecting as the user ``access`` names (``nats_user``, ``*_file`` paths)."""
    files = {k: Path(v) for k, v in access.items() if k.endswith("_file") and v}
    return settings.model_copy(update={"nats_user": access.get("nats_user"), **files})


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.nats_ca_file is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(settings.nats_ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"MBX_NATS_CA_FILE: {settings.nats_ca_file} is not a usable CA file ({exc})") from None


def connect_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect``: credentials, private inbox, TLS."""
    options: dict[str, Any] = {}
    if settings.nats_user:
        if settings.nats_password_file is None:
            raise ConfigError("MBX_NATS_USER is set but MBX_NATS_PASSWORD_FILE is not")
        options["user"] = settings.nats_user
        options["password"] = read_secret(settings.nats_password_file, "MBX_NATS_PASSWORD_FILE")
        options["inbox_prefix"] = inbox_prefix(settings.nats_user)
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
    return options


def broker_options(settings: Settings) -> dict[str, Any]:
    """The same for a FastStream ``NatsBroker`` (its ``security`` object and inbox prefix)."""
    from faststream.nats.security import NatsSecurity, NatsUserPassword  # noqa: PLC0415

    options = connect_options(settings)
    if "user" in options:
        return {
            "security": NatsUserPassword(options["user"], options["password"], ssl_context=options.get("tls")),
            "inbox_prefix": options["inbox_prefix"],
        }
    if "tls" in options:
        return {"security": NatsSecurity(ssl_context=options["tls"])}
    return {}
