"""A pooled keep-alive connection the broker closed is no reason to call an order ambiguous: a
request whose head could not be written to it is sent again on a fresh connection, once; a
request that was written before the connection dropped stays ambiguous (the broker may have it).
Real httpx and httpcore over loopback to the fake Alpaca (``tests/fakes/idle_close.py``)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from contracts import OrderStatus
from tests.builders import make_intent
from tests.fakes.alpaca import FakeAlpaca
from tests.fakes.idle_close import IdleClosingNetwork
from tests.fakes.serve import serve
from workers.domain.venue import VenueAmbiguous, VenueRejected
from workers.venues.alpaca.venue import AlpacaVenue


async def test_a_post_on_a_connection_the_broker_closed_idle_is_sent_again_on_a_fresh_one() -> None:
    """The order is placed once, on a new connection, and its placement is not ambiguous."""
    fake = FakeAlpaca(cash=Decimal(10**9))
    network = IdleClosingNetwork()
    with serve(fake.handle) as (url, _):
        venue = AlpacaVenue(fake.key_id, fake.secret_key, base_url=url, transport=network.transport())
        await venue.connect()  # reads the account: one pooled connection, kept alive
        try:
            assert network.connections == 1
            network.close_idle()
            intent = make_intent()
            order = await venue.place_order(intent, intent.intent_id)
            assert order.client_order_id == intent.intent_id
            assert network.connections == 2
            assert [path for method, path in fake.requests if method == "POST"] == ["/v2/orders"]
            assert len(fake.orders) == 1
        finally:
            await venue.disconnect()


async def test_a_post_written_before_the_connection_dropped_stays_ambiguous() -> None:
    """The broker read the order and dropped the connection unanswered: ambiguous, not resent."""
    fake = FakeAlpaca(cash=Decimal(10**9))
    network = IdleClosingNetwork()
    with serve(fake.handle) as (url, _):
        venue = AlpacaVenue(fake.key_id, fake.secret_key, base_url=url, transport=network.transport())
        await venue.connect()
        try:
            network.drop_after_sending()
            intent = make_intent()
            with pytest.raises(VenueAmbiguous):
                await venue.place_order(intent, intent.intent_id)
            assert [path for method, path in fake.requests if method == "POST"] == ["/v2/orders"]
            assert network.connections == 1
        finally:
            await venue.disconnect()


async def test_a_cancel_written_before_the_connection_dropped_is_sent_again() -> None:
    """A DELETE is idempotent: the one whose answer was lost with the connection is sent once
    more on a fresh connection instead of leaving the cancel unanswered (the bad-day run had a
    cancel wait through deliveries until its order expired). The second finds the order
    cancelled: too late, by the contract, and the executor takes that as done."""
    fake = FakeAlpaca(cash=Decimal(10**9))
    network = IdleClosingNetwork()
    with serve(fake.handle) as (url, _):
        venue = AlpacaVenue(fake.key_id, fake.secret_key, base_url=url, transport=network.transport())
        await venue.connect()
        try:
            intent = make_intent(order_type="limit", limit_price="1")
            placed = await venue.place_order(intent, intent.intent_id)
            network.drop_after_sending()
            with pytest.raises(VenueRejected) as answered:
                await venue.cancel_order(placed.broker_order_id)
            assert answered.value.reason_code == "too_late_to_cancel"
            assert [path for method, path in fake.requests if method == "DELETE"] == [
                f"/v2/orders/{placed.broker_order_id}"
            ] * 2
            now = await venue.get_order(placed.broker_order_id)
            assert now is not None and now.status is OrderStatus.CANCELLED
        finally:
            await venue.disconnect()
