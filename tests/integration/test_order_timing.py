"""An order row carries its decision time, reference price and first fill time (migration
0010), whatever order the aggregator stores its route, its reports and its fills in."""

from __future__ import annotations

import itertools
from datetime import timedelta
from decimal import Decimal

import pytest

from contracts import BrokerName, OrderStatus
from tests.builders import make_intent, make_route
from tests.conftest import fetch_all
from workers.aggregator.persistence import AuditStore, Envelope
from workers.domain.reports import fill_message, report
from workers.domain.venue import VenueFill, VenueOrder
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration


def messages(intent_id: str) -> dict[str, Envelope]:
    """A route, a partial fill with its report, and the final fill with the final report."""
    intent = make_intent(intent_id=intent_id, quantity="10")
    route = make_route(intent, BrokerName.ALPACA, reference_price=Decimal("100.25"))
    first = VenueFill(
        f"{intent_id}-f1", Decimal(4), Decimal("100.5"), Decimal(0), route.created_at + timedelta(milliseconds=40)
    )
    last = VenueFill(
        f"{intent_id}-f2", Decimal(6), Decimal("100.5"), Decimal(0), route.created_at + timedelta(milliseconds=90)
    )
    partial = VenueOrder(f"bo-{intent_id}", intent_id, OrderStatus.PARTIALLY_FILLED, Decimal(10))
    partial.fills, partial.filled_quantity, partial.average_price = [first], Decimal(4), Decimal("100.5")
    done = VenueOrder(f"bo-{intent_id}", intent_id, OrderStatus.FILLED, Decimal(10))
    done.fills, done.filled_quantity, done.average_price = [first, last], Decimal(10), Decimal("100.5")
    return {
        "route": Envelope("mbx.routes.alpaca", route),
        "partial": Envelope(
            "mbx.exec.alpaca.partially_filled", report(route, OrderStatus.PARTIALLY_FILLED, 2, partial)
        ),
        "fill": Envelope("mbx.fills.alpaca.AAPL", fill_message(route, done, last)),
        "filled": Envelope("mbx.exec.alpaca.filled", report(route, OrderStatus.FILLED, 3, done)),
    }


async def test_the_order_row_gets_its_timing_in_any_arrival_order(isolated: Settings) -> None:
    """Every order of arrival, each message in a batch (a transaction) of its own."""
    store = AuditStore(make_engine(isolated.sqlalchemy_url(), pool_size=1))
    try:
        for k, arrival in enumerate(itertools.permutations(["route", "partial", "fill", "filled"])):
            envelopes = messages(f"timing-{k}")
            for name in arrival:
                assert await store.apply([envelopes[name]]) == 1
            route = envelopes["route"].message
            [order] = await fetch_all(store.engine, "SELECT * FROM orders WHERE intent_id = :i", i=f"timing-{k}")
            assert order["decided_at"] == route.created_at, arrival
            assert order["reference_price"] == Decimal("100.25"), arrival
            assert order["first_fill_at"] == route.created_at + timedelta(milliseconds=40), arrival
            assert order["status"] == "filled", arrival
    finally:
        await store.engine.dispose()
