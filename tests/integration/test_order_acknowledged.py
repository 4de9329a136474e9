"""An order row records when its broker acknowledged it (``acknowledged_at``, migration 0012):
the time of the first report that shows the broker holds the order, set once and kept the
earliest whatever order or batches the reports arrive in."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from contracts import BrokerName, ExecutionReport, OrderStatus
from tests.builders import make_intent, make_route
from tests.conftest import fetch_all
from workers.aggregator.persistence import AuditStore, Envelope
from workers.domain.reports import report
from workers.domain.venue import VenueOrder
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration


def at(message: ExecutionReport, when: datetime) -> ExecutionReport:
    return message.model_copy(update={"created_at": when})


def lifecycle(intent_id: str) -> tuple[datetime, dict[str, Envelope]]:
    """A route, then the broker's reports 15, 50 and 100 ms after the decision: accepted, partly
    filled, filled."""
    intent = make_intent(intent_id=intent_id, quantity="10")
    route = make_route(intent, BrokerName.ALPACA, reference_price=Decimal("100.25"))
    decided = route.created_at
    working = VenueOrder(f"bo-{intent_id}", intent_id, OrderStatus.ACCEPTED, Decimal(10))
    partial = VenueOrder(f"bo-{intent_id}", intent_id, OrderStatus.PARTIALLY_FILLED, Decimal(10))
    partial.filled_quantity, partial.average_price = Decimal(4), Decimal("100.5")
    done = VenueOrder(f"bo-{intent_id}", intent_id, OrderStatus.FILLED, Decimal(10))
    done.filled_quantity, done.average_price = Decimal(10), Decimal("100.5")
    ms = timedelta(milliseconds=1)
    reports = {
        "accepted": at(report(route, OrderStatus.ACCEPTED, 1, working, final=False), decided + 15 * ms),
        "partial": at(report(route, OrderStatus.PARTIALLY_FILLED, 2, partial), decided + 50 * ms),
        "filled": at(report(route, OrderStatus.FILLED, 3, done), decided + 100 * ms),
    }
    envelopes = {"route": Envelope("mbx.routes.alpaca", route)}
    envelopes |= {name: Envelope(f"mbx.exec.alpaca.{name}", r) for name, r in reports.items()}
    return decided + 15 * ms, envelopes


async def acknowledged(store: AuditStore, intent_id: str) -> tuple[datetime | None, str]:
    [order] = await fetch_all(store.engine, "SELECT * FROM orders WHERE intent_id = :i", i=intent_id)
    return order["acknowledged_at"], order["status"]


async def test_the_first_acknowledgement_is_kept_in_any_arrival_order(isolated: Settings) -> None:
    """Each message in a transaction of its own, in every order: the acceptance's time is kept,
    a later report never moves it, and a stale acceptance arriving last still sets it."""
    store = AuditStore(make_engine(isolated.sqlalchemy_url(), pool_size=1))
    try:
        for k, arrival in enumerate(itertools.permutations(["route", "accepted", "partial", "filled"])):
            intent_id = f"ack-{k}"
            accepted_at, envelopes = lifecycle(intent_id)
            for n, name in enumerate(arrival):
                assert await store.apply([envelopes[name]]) == 1
                reported = [envelopes[m].message.created_at for m in arrival[: n + 1] if m != "route"]
                when, _ = await acknowledged(store, intent_id)
                assert when == min(reported, default=None), arrival
            assert await acknowledged(store, intent_id) == (accepted_at, "filled"), arrival
    finally:
        await store.engine.dispose()


async def test_one_batch_keeps_its_earliest_acknowledgement_and_the_newest_state(isolated: Settings) -> None:
    """Accepted and filled in one batch (one transaction): the row shows filled, acknowledged
    when accepted; the same reports delivered again change nothing."""
    store = AuditStore(make_engine(isolated.sqlalchemy_url(), pool_size=1))
    try:
        accepted_at, envelopes = lifecycle("ack-batch")
        batch = [envelopes[name] for name in ("filled", "route", "accepted", "partial")]
        assert await store.apply(batch) == 4
        assert await acknowledged(store, "ack-batch") == (accepted_at, "filled")
        assert await store.apply(batch) == 0
        [order] = await fetch_all(store.engine, "SELECT * FROM orders WHERE intent_id = 'ack-batch'")
        assert (order["acknowledged_at"], order["status"], order["report_seq"]) == (accepted_at, "filled", 3)
        assert order["filled_quantity"] == Decimal(10)
    finally:
        await store.engine.dispose()


async def test_no_acknowledgement_before_the_broker_answers_or_when_it_refuses(isolated: Settings) -> None:
    """Submitted, unknown, a broker's rejection, a failure and a router rejection (no broker)
    leave the acknowledgement empty; a stale acceptance never overwrites the newer state."""
    store = AuditStore(make_engine(isolated.sqlalchemy_url(), pool_size=1))
    try:
        for status in (OrderStatus.SUBMITTED, OrderStatus.UNKNOWN, OrderStatus.REJECTED, OrderStatus.FAILED):
            intent = make_intent(intent_id=f"ack-{status}", quantity="10")
            route = make_route(intent, BrokerName.SCHWAB)
            assert await store.apply([Envelope("mbx.routes.schwab", route)]) == 1
            refused = report(route, status, 1, reason_code="x", reason="no")
            assert await store.apply([Envelope(f"mbx.exec.schwab.{status}", refused)]) == 1
            assert await acknowledged(store, f"ack-{status}") == (None, str(status))

        unrouted = report(make_route(make_intent(intent_id="ack-router"), BrokerName.ALPACA), OrderStatus.REJECTED, 1)
        unrouted = unrouted.model_copy(update={"broker": None})
        assert await store.apply([Envelope("mbx.exec.unrouted.rejected", unrouted)]) == 1
        assert await acknowledged(store, "ack-router") == (None, "rejected")

        accepted_at, envelopes = lifecycle("ack-stale")
        for name in ("route", "filled", "accepted"):
            assert await store.apply([envelopes[name]]) == 1
        [order] = await fetch_all(store.engine, "SELECT * FROM orders WHERE intent_id = 'ack-stale'")
        assert (order["acknowledged_at"], order["status"], order["report_seq"]) == (accepted_at, "filled", 3)
        assert (order["filled_quantity"], order["average_price"]) == (Decimal(10), Decimal("100.5"))
    finally:
        await store.engine.dispose()
