"""What is Robinhood Crypto's own: an Ed25519 signature over the exact request, UUID client
order ids, lookups by listing through pages, crypto only, and no paper environment."""

from __future__ import annotations

import base64
from decimal import Decimal

import httpx
import pytest

from contracts import OrderStatus
from tests.builders import CRYPTO, FRACTIONAL, make_intent
from tests.fakes.robinhood import FakeRobinhood, golden, new_key_pair
from workers.domain.config import parse_config
from workers.domain.venue import VenueAuthFailed, VenueRejected
from workers.venues.factory import live_refusal, resolve_config
from workers.venues.robinhood.venue import RobinhoodCryptoVenue, Signer, client_order_id, parse_order


def test_the_signature_covers_key_time_path_method_and_body() -> None:
    private, public = new_key_pair()
    signer = Signer("rh-api-key", private)
    body = '{"symbol": "BTC-USD"}'
    headers = signer.headers("/api/v1/crypto/trading/orders/", "POST", body, now=1_700_000_000)
    assert (headers["x-api-key"], headers["x-timestamp"]) == ("rh-api-key", "1700000000")
    message = "rh-api-key1700000000/api/v1/crypto/trading/orders/POST" + body
    assert signer.message(1_700_000_000, "/api/v1/crypto/trading/orders/", "POST", body) == message
    public.verify(base64.b64decode(headers["x-signature"]), message.encode())  # raises if wrong
    with pytest.raises(VenueAuthFailed) as bad:
        Signer("rh-api-key", "not base64 at all!")
    assert "not base64" not in str(bad.value)


# docs.robinhood.com/crypto/trading, "Headers and Signature": the published example key, request and
# signature (public example values, not credentials). Its Python example signs the body as Python
# prints the dict, so that string is the body here; what matters is signing the bytes we send.
DOCS_PRIVATE_KEY = "xQnTJVeQLmw1/Mg2YimEViSpw/SdJcgNXZ5kQkAXNPU="
DOCS_PUBLIC_KEY = "jPItx4TLjcnSUnmnXQQyAKL4eJj3+oWNNMmmm2vATqk="
DOCS_API_KEY = "rh-api-6148effc-c0b1-486c-8940-a1d099456be6"
DOCS_BODY = str(
    {
        "client_order_id": "131de903-5a9c-4260-abc1-28d562a5dcf0",
        "side": "buy",
        "symbol": "BTC-USD",
        "type": "market",
        "market_order_config": {"asset_quantity": "0.1"},
    }
)
DOCS_SIGNATURE = "q/nEtxp/P2Or3hph3KejBqnw5o9qeuQ+hYRnB56FaHbjDsNUY9KhB1asMxohDnzdVFSD7StaTqjSd9U9HvaRAw=="


def test_the_signer_reproduces_the_documented_test_vector() -> None:
    signer = Signer(DOCS_API_KEY, DOCS_PRIVATE_KEY)
    headers = signer.headers("/api/v1/crypto/trading/orders/", "POST", DOCS_BODY, now=1698708981)
    assert headers == {"x-api-key": DOCS_API_KEY, "x-timestamp": "1698708981", "x-signature": DOCS_SIGNATURE}
    assert signer.public_key_b64() == DOCS_PUBLIC_KEY
    other = signer.headers("/api/v1/crypto/trading/orders/", "POST", DOCS_BODY.replace("0.1", "0.2"), now=1698708981)
    assert other["x-signature"] != DOCS_SIGNATURE


def test_an_intent_always_gets_the_same_uuid_client_id() -> None:
    assert client_order_id("intent-1") == client_order_id("intent-1") != client_order_id("intent-2")
    assert len(client_order_id("intent-1")) == 36


async def test_a_wrong_signature_is_refused() -> None:
    fake = FakeRobinhood()
    other, _ = new_key_pair()
    venue = RobinhoodCryptoVenue(fake.api_key, other, transport=httpx.MockTransport(fake.handle))
    await venue.connect()
    intent = make_intent(**CRYPTO)
    with pytest.raises(VenueAuthFailed):
        await venue.place_order(intent, intent.intent_id)
    assert fake.orders == {} and not venue.is_connected
    await venue.disconnect()


async def test_an_order_is_found_across_pages_and_equities_are_refused() -> None:
    fake = FakeRobinhood()
    venue = RobinhoodCryptoVenue(fake.api_key, fake.private_key, transport=httpx.MockTransport(fake.handle))
    await venue.connect()
    intents = [make_intent(**CRYPTO) for _ in range(5)]
    placed = [await venue.place_order(i, i.intent_id) for i in intents]
    found = await venue.locate(intents[-1], intents[-1].intent_id, placed[0].submitted_at or placed[-1].submitted_at)  # type: ignore[arg-type]
    assert found is not None and found.broker_order_id == placed[-1].broker_order_id
    assert sum(1 for method, path in fake.requests if method == "GET" and path == "/trading/orders/") == 3
    with pytest.raises(VenueRejected) as equity:
        await venue.place_order(make_intent(**FRACTIONAL), "e-1")
    assert equity.value.reason_code == "unsupported_asset" and not equity.value.order_specific
    await venue.disconnect()


def test_the_adapter_restricts_routing_to_crypto_and_needs_the_live_opt_in() -> None:
    raw = {
        "brokers": {"robinhood": {"adapter": "robinhood_crypto", "credentials": {"api_key": "k", "private_key": "p"}}}
    }
    config = resolve_config(parse_config(raw))
    assert config.brokers["robinhood"].assets == ["crypto"]
    assert live_refusal(config, allowed=False) == (
        "refusing to start: robinhood would trade real money; start with --live (or MBX_LIVE=1) to allow it"
    )


def test_an_open_order_with_a_fill_is_partially_filled() -> None:
    """Robinhood's documented states are open, partially_filled, filled, canceled and failed; an
    ``open`` (or unlisted) state with a filled quantity keeps its fill."""
    execution = {"effective_price": "1000.00", "quantity": "0.05", "timestamp": "2019-08-24T14:15:22Z"}
    order = parse_order({**golden("order"), "filled_asset_quantity": "0.05", "executions": [execution]})
    assert (order.status, order.filled_quantity) == (OrderStatus.PARTIALLY_FILLED, Decimal("0.05"))
    assert parse_order({**golden("order"), "executions": []}).status is OrderStatus.ACCEPTED
