"""The simulated broker's NATS-backed book never loses a fill: a copy of an order from its
creation (saved by a lookup that found it before its placer saved it, or by the placer itself
after such a lookup) never overwrites a later version. The chaos runs caught the test's trade of
half a resting order undone that way: the rest was then booked as the order's first fill again,
under the id of the half already reported, so Postgres held one fill for a filled order."""

from __future__ import annotations

import uuid
from dataclasses import replace
from decimal import Decimal

import pytest
from nats.aio.client import Client as NatsClient

from contracts import BrokerName, OrderStatus
from tests.builders import make_intent
from workers.venues.simulated.book import KvOrderBook, MemoryOrderBook, OrderBook
from workers.venues.simulated.venue import SimulatedVenue

pytestmark = pytest.mark.integration


def _books(nc: NatsClient) -> list[OrderBook]:
    return [KvOrderBook(nc.jetstream, f"sim_book_test_{uuid.uuid4().hex[:8]}"), MemoryOrderBook()]


@pytest.mark.parametrize("kind", ["kv", "memory"])
async def test_a_creation_copy_saved_late_never_undoes_a_trade(nc: NatsClient, kind: str) -> None:
    book = _books(nc)[0 if kind == "kv" else 1]
    venue = SimulatedVenue(BrokerName.COINBASE, book=book)
    await venue.connect()
    intent = make_intent(
        symbol="SOL-USD", asset_class="crypto", order_type="limit", limit_price="0.5", quantity="2", time_in_force="gtc"
    )
    placed = await venue.place_order(intent, intent.intent_id)
    # The order as it was created: what a slow placer, or a lookup that read the book before
    # the trade below, writes afterwards.
    creation_copy = replace(placed, fills=list(placed.fills))
    assert creation_copy.fills == []
    await venue.trade(placed.broker_order_id, Decimal(1))

    await book.save(creation_copy, new=True)
    assert await book.by_client_id(intent.intent_id) == await book.get(placed.broker_order_id)

    now = await book.get(placed.broker_order_id)
    assert now is not None
    assert (now.status, now.filled_quantity, [f.fill_id for f in now.fills]) == (
        OrderStatus.PARTIALLY_FILLED,
        Decimal(1),
        [f"{placed.broker_order_id}-1"],
    )
    rest = await venue.trade(placed.broker_order_id)
    assert [(f.fill_id, f.quantity) for f in rest.fills] == [
        (f"{placed.broker_order_id}-1", Decimal(1)),
        (f"{placed.broker_order_id}-2", Decimal(1)),
    ]
    assert (rest.status, rest.filled_quantity) == (OrderStatus.FILLED, Decimal(2))
