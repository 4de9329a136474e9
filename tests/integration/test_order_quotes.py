"""An order row carries what the best-execution report reads (migration 0014): its route's quote,
its fills' totals and last time, and whether it failed over, right whatever order the route, the
report, the fills and the failover arrive in, once each however often they are delivered."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from contracts import BrokerName, FailoverEvent, Fill, OrderStatus, ReferenceQuote, RouteDecision
from tests.builders import make_intent, make_route
from tests.conftest import fetch_all
from workers.aggregator.persistence import AuditStore, Envelope
from workers.domain.reports import report
from workers.domain.venue import VenueOrder
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration

D = Decimal
COLUMNS = "quote_bid, quote_ask, quote_mid, traded_quantity, traded_value, traded_fees, last_fill_at, failed_over"


def fill(route: RouteDecision, n: int, quantity: str, price: str, fee: str, after_ms: int) -> Fill:
    return Fill(
        message_id=f"fill-{route.intent_id}-{n}",
        correlation_id=route.intent_id,
        fill_id=f"{route.intent_id}-{n}",
        intent_id=route.intent_id,
        strategy_id=route.strategy_id,
        broker=route.broker,
        broker_order_id=f"bo-{route.intent_id}",
        symbol=route.intent.symbol,
        asset_class=route.intent.asset_class,
        side=route.intent.side,
        quantity=D(quantity),
        price=D(price),
        fee=D(fee),
        executed_at=route.created_at + timedelta(milliseconds=after_ms),
    )


def story(intent_id: str) -> dict[str, Envelope]:
    """A buy of 10 routed to alpaca at 99.98 / 100.00 / 100.02, accepted, filled 4 then 6, and
    its attempt handed on to another broker."""
    intent = make_intent(intent_id=intent_id, quantity="10")
    route = make_route(intent, BrokerName.ALPACA, reference_price=D("100.00"))
    quote = ReferenceQuote(
        source="simulated", bid=D("99.98"), ask=D("100.02"), mid=D("100.00"), at=route.created_at, age_ms=5
    )
    route = route.model_copy(update={"quote": quote})
    working = VenueOrder(f"bo-{intent_id}", intent_id, OrderStatus.ACCEPTED, D(10))
    failover = FailoverEvent(
        correlation_id=intent_id,
        intent_id=intent_id,
        strategy_id=route.strategy_id,
        failed_broker=BrokerName.ALPACA,
        attempt=1,
        reason_code="venue_unavailable",
        reason="alpaca is unreachable",
        decision=route,
    )
    return {
        "route": Envelope("mbx.routes.alpaca", route),
        "report": Envelope("mbx.exec.alpaca.accepted", report(route, OrderStatus.ACCEPTED, 1, working, final=False)),
        "fill 1": Envelope("mbx.fills.alpaca", fill(route, 1, "4", "100.5", "0.04", 40)),
        "fill 2": Envelope("mbx.fills.alpaca", fill(route, 2, "6", "100.25", "0.06", 90)),
        "failover": Envelope("mbx.failover.alpaca", failover),
    }


def expected(envelopes: dict[str, Envelope], arrived: set[str]) -> tuple[Any, ...]:
    """The eight columns as the messages that arrived make them."""
    route = envelopes["route"].message
    assert isinstance(route, RouteDecision) and route.quote is not None
    fills = [m for name, e in envelopes.items() if name in arrived and isinstance(m := e.message, Fill)]
    quote = (route.quote.bid, route.quote.ask, route.quote.mid) if "route" in arrived else (None, None, None)
    traded: tuple[Any, ...] = (None, None, None, None)
    if fills:
        traded = (
            sum(f.quantity for f in fills),
            sum(f.quantity * f.price for f in fills),
            sum(f.fee for f in fills),
            max(f.executed_at for f in fills),
        )
    return (*quote, *traded, "failover" in arrived)


async def columns(store: AuditStore, intent_id: str) -> tuple[Any, ...] | None:
    rows = await fetch_all(store.engine, f"SELECT {COLUMNS} FROM orders WHERE intent_id = :i", i=intent_id)
    return None if not rows else tuple(rows[0].values())


async def test_every_arrival_order_leaves_the_quote_fills_and_failover_on_the_order(isolated: Settings) -> None:
    """Route, report, two fills and a failover, each in a transaction of its own, in all 120
    orders: once the order is stored its columns show exactly what has arrived (what came before
    it waited for it), and a fill delivered again under another message id adds nothing."""
    store = AuditStore(make_engine(isolated.sqlalchemy_url(), pool_size=1))
    try:
        for k, arrival in enumerate(itertools.permutations(["route", "report", "fill 1", "fill 2", "failover"])):
            intent_id = f"quote-{k}"
            envelopes = story(intent_id)
            for n, name in enumerate(arrival):
                assert await store.apply([envelopes[name]]) == 1
                arrived = set(arrival[: n + 1])
                stored = await columns(store, intent_id)
                if arrived & {"route", "report"}:
                    assert stored == expected(envelopes, arrived), (arrival, name)
                else:
                    assert stored is None
            again = envelopes["fill 1"].message.model_copy(update={"message_id": f"again-{intent_id}"})
            assert await store.apply([Envelope("mbx.fills.alpaca", again)]) == 1  # new message, known fill
            final = await columns(store, intent_id)
            assert final == expected(envelopes, set(arrival))
            assert final is not None and final[3:6] == (D(10), D("1003.50"), D("0.10"))
            awaiting = "SELECT 1 FROM fills_awaiting_order WHERE intent_id = :i"
            assert await fetch_all(store.engine, awaiting, i=intent_id) == []  # taken by the order
    finally:
        await store.engine.dispose()


async def test_one_batch_with_everything_and_its_redelivery(isolated: Settings) -> None:
    """Fills before their route in one batch (one transaction), then the whole batch again: the
    same values, counted once."""
    store = AuditStore(make_engine(isolated.sqlalchemy_url(), pool_size=1))
    try:
        envelopes = story("quote-batch")
        batch = [envelopes[name] for name in ("fill 2", "failover", "fill 1", "report", "route")]
        assert await store.apply(batch) == 5
        assert await columns(store, "quote-batch") == expected(envelopes, set(envelopes))
        assert await store.apply(batch) == 0
        assert await columns(store, "quote-batch") == expected(envelopes, set(envelopes))
    finally:
        await store.engine.dispose()


async def test_two_replicas_writing_orders_and_their_fills_at_once_lose_no_fill(isolated: Settings) -> None:
    """Two aggregators' transactions, one storing routes and one the fills of the same intents,
    run at the same time: every order ends with both its fills."""
    routes_side = AuditStore(make_engine(isolated.sqlalchemy_url(), pool_size=1))
    fills_side = AuditStore(make_engine(isolated.sqlalchemy_url(), pool_size=1))
    try:
        stories = [story(f"quote-race-{k}") for k in range(100)]
        for start in range(0, len(stories), 10):
            group = stories[start : start + 10]
            await asyncio.gather(
                routes_side.apply([s["route"] for s in group]),
                fills_side.apply([s[name] for s in group for name in ("fill 1", "fill 2")]),
            )
        for s in stories:
            intent_id = s["route"].message.intent_id
            assert await columns(routes_side, intent_id) == expected(s, {"route", "fill 1", "fill 2"}), intent_id
    finally:
        await routes_side.engine.dispose()
        await fills_side.engine.dispose()
