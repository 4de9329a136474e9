"""What is Coinbase's own: its JWT per request, a reused client order id, business failures in a
200, its documented shapes, and a broker with no paper environment."""

from __future__ import annotations

import base64
from decimal import Decimal

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from contracts import OrderStatus
from tests.builders import CRYPTO, make_intent
from tests.fakes.coinbase import FakeCoinbase, golden, new_key_pair
from workers.domain.config import parse_config
from workers.domain.venue import VenueAuthFailed, VenueRejected
from workers.venues.coinbase import wire
from workers.venues.coinbase.auth import Signer
from workers.venues.coinbase.venue import CoinbaseVenue
from workers.venues.factory import live_refusal


def test_each_request_gets_its_own_token_naming_it() -> None:
    pem, public = new_key_pair()
    signer = Signer("organizations/o/apiKeys/k", pem)
    token = signer.token("POST", "api.coinbase.com", "/api/v3/brokerage/orders", now=1_700_000_000)
    claims = jwt.decode(token, public, algorithms=["ES256"], options={"verify_exp": False, "verify_nbf": False})
    assert claims == {
        "sub": "organizations/o/apiKeys/k",
        "iss": "cdp",
        "nbf": 1_700_000_000,
        "exp": 1_700_000_120,
        "uri": "POST api.coinbase.com/api/v3/brokerage/orders",
    }
    header = jwt.get_unverified_header(token)
    assert header["kid"] == "organizations/o/apiKeys/k" and header["alg"] == "ES256" and len(header["nonce"]) == 64
    assert signer.token("POST", "api.coinbase.com", "/x", now=1) != signer.token(
        "POST", "api.coinbase.com", "/x", now=1
    )


def test_an_ed25519_key_signs_with_eddsa() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    token = Signer("k", base64.b64encode(raw).decode()).token("GET", "h", "/p")
    assert jwt.decode(token, key.public_key(), algorithms=["EdDSA"])["uri"] == "GET h/p"
    with pytest.raises(VenueAuthFailed) as bad:
        Signer("k", "not a key at all")
    assert "not a key" not in str(bad.value)  # the secret is never quoted


async def test_a_wrong_signature_is_refused() -> None:
    fake = FakeCoinbase()
    other_key, _ = new_key_pair()
    venue = CoinbaseVenue(fake.key_name, other_key, transport=httpx.MockTransport(fake.handle))
    await venue.connect()
    intent = make_intent(**CRYPTO)
    with pytest.raises(VenueAuthFailed):
        await venue.place_order(intent, intent.intent_id)
    assert not venue.is_connected and fake.orders == {}
    await venue.disconnect()


async def test_a_reused_client_id_on_another_order_is_not_taken_for_it() -> None:
    fake = FakeCoinbase()
    venue = CoinbaseVenue(fake.key_name, fake.private_key, transport=httpx.MockTransport(fake.handle))
    await venue.connect()
    first = make_intent(**CRYPTO)
    placed = await venue.place_order(first, first.intent_id)
    assert (await venue.place_order(first, first.intent_id)).broker_order_id == placed.broker_order_id
    other = make_intent(**{**CRYPTO, "symbol": "ETH-USD"})
    with pytest.raises(VenueRejected) as reused:
        await venue.place_order(other, first.intent_id)
    assert reused.value.reason_code == "client_order_id_reused" and reused.value.order_specific
    assert len(fake.orders) == 1
    await venue.disconnect()


def test_documented_shapes_parse() -> None:
    order = wire.parse_order(golden("order"))
    assert (order.status, order.quantity, order.limit_price, order.side) == (
        OrderStatus.ACCEPTED,
        Decimal("0.001"),
        Decimal(10000),
        "buy",
    )
    fill = wire.parse_fill(golden("fill"))
    assert (fill.quantity, fill.price, fill.fee, fill.fill_id) == (
        Decimal("0.001"),
        Decimal(10000),
        Decimal("0.12"),
        "22222-2222222-22222222",
    )
    in_quote = wire.parse_fill(golden("fill") | {"size": "10.00", "size_in_quote": True})
    assert in_quote.quantity == Decimal("0.001")
    assert set(wire.STATUSES) >= {"PENDING", "OPEN", "FILLED", "CANCELLED", "EXPIRED", "FAILED", "QUEUED"}


def test_an_intent_becomes_an_order_configuration() -> None:
    assert wire.order_configuration(make_intent(**CRYPTO)) == {"market_market_ioc": {"base_size": "0.01"}}
    notional = make_intent(**{**CRYPTO, "quantity": None, "notional": "25"})
    assert wire.order_configuration(notional) == {"market_market_ioc": {"quote_size": "25"}}
    limit = make_intent(**CRYPTO, order_type="limit", limit_price="50000")
    assert wire.order_configuration(limit) == {
        "limit_limit_gtc": {"base_size": "0.01", "limit_price": "50000", "post_only": False}
    }


def test_coinbase_has_no_paper_account_so_it_needs_the_opt_in() -> None:
    config = parse_config(
        {"brokers": {"coinbase": {"adapter": "coinbase", "credentials": {"api_key": "k", "api_secret": "s"}}}}
    )
    assert live_refusal(config, allowed=False) == (
        "refusing to start: coinbase would trade real money; start with --live (or MBX_LIVE=1) to allow it"
    )
    assert live_refusal(config, allowed=True) is None
