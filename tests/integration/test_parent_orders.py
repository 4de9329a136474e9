"""Parent orders on the real stack (issue 30): the router forwards a parent to the parent-order
worker, which sends its children as ordinary intents the router routes, on a real nats-server and
PostgreSQL with simulated brokers. Split across brokers within their allocation, TWAP slices on
time, an iceberg showing no more than its display quantity, a cancel that ends every child, a limit
price no child crosses, and a restart of the worker that sends no child twice and skips none."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from contracts import (
    BrokerName,
    ExecutionReport,
    ExposureSnapshot,
    OrderIntent,
    OrderStatus,
    ParentReport,
    ParentStatus,
    RouteDecision,
    Subjects,
)
from tests.builders import intent_payload
from tests.conftest import Pipeline, eventually, exposure_where, fetch_all, simulated_venue, unthrottled
from tests.integration.test_security import as_role, secured
from workers.devstack.nats import EmbeddedNats
from workers.domain.config import MbxConfig, parse_config
from workers.domain.parents import child_id, schedule
from workers.entry import build_executor_worker, build_worker
from workers.ops import security
from workers.platform.access import connect_options
from workers.platform.bus import ensure_streams, jetstream, read_stream, stored_at
from workers.platform.db.engine import make_engine
from workers.platform.live_config import write_live_config
from workers.platform.runtime import Worker
from workers.platform.settings import Settings
from workers.venues.simulated.impact import ImpactModel
from workers.venues.simulated.quotes import QuoteModel
from workers.venues.simulated.venue import SimulatedVenue

pytestmark = pytest.mark.integration
__all__ = ["secured"]  # the secured nats-server fixture, shared with the security tests

STRATEGY = "algo"
PAPER = Decimal(100_000)
QUOTES = QuoteModel()
EQUITY_BROKERS = (BrokerName.ALPACA, BrokerName.ROBINHOOD, BrokerName.SCHWAB, BrokerName.IBKR)


class Stack:
    """A pipeline (the parent-order worker included) on its own subjects and database."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.subjects = Subjects(settings.subject_prefix)
        self.db = make_engine(settings.database_url or "", pool_size=2)
        self.pipeline: Pipeline | None = None

    async def start(
        self,
        start_pipeline: Any,
        config: dict[str, Any] | None = None,
        venues: dict[BrokerName, SimulatedVenue] | None = None,
    ) -> Pipeline:
        self.nc = await nats.connect(self.settings.nats_url or "")
        self.js = self.nc.jetstream()
        self.pipeline = await start_pipeline(
            parse_config(config or {}), venue_overrides=venues, own_settings=self.settings
        )
        return self.pipeline

    async def close(self) -> None:
        await self.nc.close()
        await self.db.dispose()

    async def send(self, **fields: Any) -> OrderIntent:
        payload = intent_payload(strategy_id=STRATEGY, **fields)
        await self.js.publish(
            self.subjects.intent(STRATEGY), json.dumps(payload).encode(), headers={"Nats-Msg-Id": payload["intent_id"]}
        )
        return OrderIntent.model_validate(payload)

    async def cancel(self, intent_id: str) -> None:
        payload = {"intent_id": intent_id, "strategy_id": STRATEGY, "message_id": f"cancel-{intent_id}"}
        await self.js.publish(
            self.subjects.cancel(STRATEGY), json.dumps(payload).encode(), headers={"Nats-Msg-Id": payload["message_id"]}
        )

    async def stored(self, stream: str, subject: str) -> list[Msg]:
        return await read_stream(self.js, self.subjects.stream_name(stream), subject)

    async def arrival(self, parent: OrderIntent) -> datetime:
        """When the forwarded parent was stored: the time its schedule counts from."""
        [forwarded] = await eventually(lambda: self.stored("ORDERS", self.subjects.parent_intent(STRATEGY)))
        assert OrderIntent.model_validate_json(forwarded.data).intent_id == parent.intent_id
        at = stored_at(forwarded)
        assert at is not None
        return at

    async def children(self, parent: OrderIntent) -> list[tuple[OrderIntent, datetime]]:
        """Every child intent stored on the strategy's intent subject, with when it was stored."""
        found = []
        for msg in await self.stored("ORDERS", self.subjects.intent(STRATEGY)):
            intent = OrderIntent.model_validate_json(msg.data)
            at = stored_at(msg)
            if intent.metadata.get("parent") == parent.intent_id and at is not None:
                found.append((intent, at))
        return found

    async def reports(self, parent: OrderIntent) -> list[ParentReport]:
        stored = await self.stored("EXECUTIONS", self.subjects.parent_report("*", STRATEGY))
        reports = [ParentReport.model_validate_json(m.data) for m in stored]
        return sorted((r for r in reports if r.intent_id == parent.intent_id), key=lambda r: r.report_seq)

    async def final(self, parent: OrderIntent, timeout: float = 30) -> ParentReport:
        async def ended() -> ParentReport | None:
            return next((r for r in await self.reports(parent) if r.final), None)

        return await eventually(ended, timeout=timeout)

    async def routes(self) -> list[RouteDecision]:
        return [
            RouteDecision.model_validate_json(m.data)
            for m in await self.stored("ROUTES", f"{self.subjects.prefix}.routes.>")
        ]

    async def child_reports(self, child: str) -> list[ExecutionReport]:
        stored = await self.stored("EXECUTIONS", f"{self.subjects.prefix}.exec.*.*.{STRATEGY}")
        return [
            r
            for r in (
                ExecutionReport.model_validate_json(m.data)
                for m in stored
                if not self.subjects.is_parent_report(m.subject) and not self.subjects.is_cancel_reject(m.subject)
            )
            if r.intent_id == child
        ]

    async def snapshot_where(self, check: Callable[[ExposureSnapshot], bool]) -> ExposureSnapshot:
        return await exposure_where(self.js, self.subjects, check)

    def venues(self) -> list[SimulatedVenue]:
        assert self.pipeline is not None
        return list(self.pipeline.venues.values())

    def worker(self, name: str) -> Worker:
        assert self.pipeline is not None
        [found] = [w for w in self.pipeline.workers if w.name == name]
        return found


@pytest.fixture
async def stack(isolated: Settings) -> Any:
    built = Stack(isolated)
    yield built
    await built.close()


def paper_venues(**extra: Any) -> dict[BrokerName, SimulatedVenue]:
    return {b: SimulatedVenue(b, cash=PAPER, rate_limit=(1_000_000, 1.0), **extra) for b in BrokerName}


def working_children(venue: SimulatedVenue, parent: OrderIntent) -> Any:
    """The parent's children working at ``venue`` now (by the client order id mbx sent)."""

    async def listed() -> list[Any]:
        return [
            o
            for o in await venue.book.all()
            if venue.placed_for(o.broker_order_id).startswith(f"{parent.intent_id}:") and not o.status.is_terminal
        ]

    return listed()


async def test_a_split_parent_fills_across_three_brokers_within_their_allocation(
    stack: Stack, start_pipeline: Any
) -> None:
    """Alpaca already holds 40,000 USD of a 500,000 USD portfolio with max_broker_allocation at 10%: a
    90,000 USD split buy fills across every equity broker, Alpaca taking only its 10,000 USD of room,
    every child routed with its own recorded decision and no broker above its allocation."""
    await stack.start(start_pipeline, {"risk": {"max_broker_allocation": "0.1"}}, paper_venues())
    symbol = "KO"
    mid = QUOTES.mid(symbol)
    await stack.snapshot_where(lambda s: all(s.buying_power.get(b, 0) > 0 for b in EQUITY_BROKERS))
    held = int(Decimal(40_000) / mid)
    first = await stack.send(symbol=symbol, quantity=str(held), broker="alpaca")
    await eventually(lambda: _filled(stack, first.intent_id))
    before = await stack.snapshot_where(lambda s: s.holdings.get(BrokerName.ALPACA, {}).get(symbol) == held)

    parent = await stack.send(symbol=symbol, quantity=str(int(Decimal(90_000) / mid)), execution={"split": {}})
    report = await stack.final(parent)

    assert report.status is ParentStatus.FILLED and report.filled_quantity == parent.quantity
    children = {c.intent_id: c for c in report.children}
    assert sum(c.quantity for c in children.values()) == parent.quantity
    by_broker: dict[BrokerName, Decimal] = {}
    for child in children.values():
        assert child.broker is not None and child.status == "filled"
        by_broker[child.broker] = by_broker.get(child.broker, Decimal(0)) + child.filled_quantity
    assert len(by_broker) >= 3
    cap = Decimal("0.1") * before.portfolio_value
    for broker, quantity in by_broker.items():
        assert before.by_broker.get(broker, Decimal(0)) + quantity * mid <= cap, broker
    assert by_broker[BrokerName.ALPACA] < max(by_broker.values())  # its room bound it
    # Every child is an ordinary intent with its own decision, recorded in Postgres and on the bus.
    rows = await eventually(lambda: _routes(stack, list(children)))
    assert {r["intent_id"]: r["broker_name"] for r in rows} == {i: str(c.broker) for i, c in children.items()}
    assert all(r["decision"]["candidates"] and r["decision"]["reason"] for r in rows)
    routes = {r.intent_id: r for r in await stack.routes() if r.intent_id in children}
    assert set(routes) == set(children)
    for route in routes.values():
        assert route.intent.metadata["parent"] == parent.intent_id
        assert route.intent.metadata["split"].startswith(f"{route.broker}: ")


async def _filled(stack: Stack, intent_id: str) -> bool:
    rows = await fetch_all(stack.db, "SELECT status FROM orders WHERE intent_id = :i", i=intent_id)
    return bool(rows) and rows[-1]["status"] == "filled"


async def _routes(stack: Stack, intent_ids: list[str]) -> list[Any]:
    rows = await fetch_all(
        stack.db,
        "SELECT intent_id, broker_name, decision FROM multi_broker_routes WHERE intent_id = ANY(:ids)",
        ids=intent_ids,
    )
    return rows if len(rows) == len(intent_ids) else []


async def test_a_twap_sends_each_of_its_ten_slices_within_a_second_of_its_time(
    stack: Stack, start_pipeline: Any
) -> None:
    """A TWAP of 100 shares in 10 slices over 10 s: slice n is stored within one second of arrival + n
    seconds, each slice one child of 10, and the parent fills."""
    await stack.start(start_pipeline)
    parent = await stack.send(symbol="MSFT", quantity="100", execution={"twap": {"duration_s": 10, "slices": 10}})
    report = await stack.final(parent)
    arrived = await stack.arrival(parent)
    due = {child_id(parent.intent_id, s.number, 0): s.due_at for s in schedule(parent, arrived)}
    sent = await stack.children(parent)
    assert sorted(i.intent_id for i, _ in sent) == sorted(due)
    for intent, at in sent:
        expected = due[intent.intent_id]
        assert expected is not None
        assert timedelta(0) <= at - expected < timedelta(seconds=1), (intent.intent_id, at - expected)
        assert intent.quantity == 10
    assert report.status is ParentStatus.FILLED and report.filled_quantity == 100
    assert [c.slice_number for c in report.children] == list(range(10))


async def test_an_iceberg_never_shows_more_than_its_display_quantity(stack: Stack, start_pipeline: Any) -> None:
    """An iceberg limit buy of 40 showing 10, resting below the ask at Alpaca: one child of 10 works at a
    time; the next is sent only once the one before has filled, and the parent fills in four."""
    pipeline = await stack.start(start_pipeline)
    venue = pipeline.venues[BrokerName.ALPACA]
    limit = (QUOTES.mid("NVDA") * Decimal("0.99")).quantize(Decimal("0.01"))
    parent = await stack.send(
        symbol="NVDA",
        quantity="40",
        order_type="limit",
        limit_price=str(limit),
        broker="alpaca",
        execution={"iceberg": {"display_quantity": "10"}},
    )
    for number in range(4):
        [order] = await eventually(lambda: working_children(venue, parent))
        assert order.quantity == 10
        assert venue.placed_for(order.broker_order_id) == child_id(parent.intent_id, number, 0)
        # Nothing of the next slice exists anywhere while this one works.
        assert len(await stack.children(parent)) == number + 1
        for other in BrokerName:
            assert await working_children(pipeline.venues[other], parent) == (
                [order] if other is BrokerName.ALPACA else []
            )
        await venue.trade(order.broker_order_id)
    report = await stack.final(parent)
    assert report.status is ParentStatus.FILLED and report.filled_quantity == 40
    assert [c.quantity for c in report.children] == [10] * 4


async def test_cancelling_a_twap_midway_reports_what_filled_and_leaves_no_child_working(
    stack: Stack, start_pipeline: Any
) -> None:
    """A TWAP of resting limit buys (10 slices over 20 s) is cancelled after three slices (a fourth may
    fall due meanwhile on a loaded machine), one of them partly filled: the unsent slices are never
    sent, every child ends cancelled at its broker, and the final report is cancelled with the 4
    shares that filled."""
    pipeline = await stack.start(start_pipeline)
    venue = pipeline.venues[BrokerName.IBKR]
    limit = (QUOTES.mid("AMZN") * Decimal("0.99")).quantize(Decimal("0.01"))
    parent = await stack.send(
        symbol="AMZN",
        quantity="100",
        order_type="limit",
        limit_price=str(limit),
        broker="ibkr",
        execution={"twap": {"duration_s": 20, "slices": 10}},
    )

    async def three_working() -> list[Any]:
        working = await working_children(venue, parent)
        return working if len(working) == 3 else []

    working = await eventually(three_working, timeout=15)
    await venue.trade(working[0].broker_order_id, Decimal(4))
    await eventually(lambda: _reported_filled(stack, parent, Decimal(4)))
    await stack.cancel(parent.intent_id)
    report = await stack.final(parent)

    assert report.status is ParentStatus.CANCELLED
    assert report.filled_quantity == 4
    # Three slices were working; on a loaded machine a fourth may fall due (every 2 s) before the
    # cancel lands. What is checked: every child sent is in the final report and ended cancelled,
    # none is working, and no slice goes after the cancel (a slice interval later, still the same).
    sent = len(report.children)
    assert 3 <= sent < 10 and {c.status for c in report.children} == {"cancelled"}
    await asyncio.sleep(2.5)
    assert len(await stack.children(parent)) == sent
    assert await working_children(venue, parent) == []
    orders = await venue.book.all()
    assert len([o for o in orders if venue.placed_for(o.broker_order_id).startswith(parent.intent_id)]) == sent


async def _reported_filled(stack: Stack, parent: OrderIntent, quantity: Decimal) -> bool:
    return any(r.filled_quantity == quantity for r in await stack.reports(parent))


async def test_no_child_crosses_the_parents_limit_price(stack: Stack, start_pipeline: Any) -> None:
    """A split limit buy of 600 at 3 bps above the ask, into brokers whose price moves 1 bps per 10
    shares taken: every child carries the parent's limit, each fills only up to it (the rest works),
    no fill is above it; cancelled, the parent reports exactly what filled."""
    await stack.start(start_pipeline, venues=paper_venues(impact=None))
    for venue in stack.venues():
        venue.impact = ImpactModel(lambda _symbol, _asset: Decimal(10), recovery_s=3600)
    quote = QUOTES.quote("META")
    limit = (quote.ask * Decimal("1.0003")).quantize(Decimal("0.01"))
    parent = await stack.send(
        symbol="META", quantity="600", order_type="limit", limit_price=str(limit), execution={"split": {}}
    )

    async def all_placed() -> list[Any]:
        children = await stack.children(parent)
        return children if sum((i.quantity or 0) for i, _ in children) == 600 else []

    children = await eventually(all_placed)
    assert len(children) >= 3
    assert {i.limit_price for i, _ in children} == {limit}

    async def partly_filled() -> bool:
        reports = await stack.reports(parent)
        return (
            bool(reports)
            and 0 < reports[-1].filled_quantity < 600
            and all(c.status in ("accepted", "partially_filled", "filled") for c in reports[-1].children)
        )

    await eventually(partly_filled)
    await stack.cancel(parent.intent_id)
    report = await stack.final(parent)
    fills = await fetch_all(
        stack.db, "SELECT intent_id, quantity, price FROM trade_logs WHERE intent_id LIKE :p", p=f"{parent.intent_id}:%"
    )
    assert fills and all(f["price"] <= limit for f in fills)
    assert report.status is ParentStatus.CANCELLED
    assert report.filled_quantity == sum(f["quantity"] for f in fills) < 600
    assert report.average_price is not None and report.average_price <= limit


async def test_a_restarted_parent_worker_sends_no_child_twice_and_skips_no_slice(
    stack: Stack, start_pipeline: Any, isolated: Settings
) -> None:
    """The parent-order worker stops after four slices of a 10-slice TWAP and a new one starts three
    seconds later: the slices that fell due meanwhile go at once, the rest at their times; each of the
    ten children is stored, routed and filled exactly once."""
    pipeline = await stack.start(start_pipeline)
    parent = await stack.send(symbol="ORCL", quantity="50", execution={"twap": {"duration_s": 10, "slices": 10}})

    async def four_sent() -> bool:
        return len(await stack.children(parent)) >= 4

    await eventually(four_sent)
    old = stack.worker("parents")
    await old.stop()
    pipeline.workers.remove(old)
    stopped_at = len(await stack.children(parent))
    await asyncio.sleep(3)
    assert len(await stack.children(parent)) == stopped_at  # nothing is sent while no worker runs
    fresh = build_worker("parents", isolated, MbxConfig())
    restarted = datetime.now(UTC)
    await fresh.start()
    pipeline.workers.append(fresh)
    report = await stack.final(parent)

    arrived = await stack.arrival(parent)
    due = {child_id(parent.intent_id, s.number, 0): s.due_at for s in schedule(parent, arrived)}
    sent = await stack.children(parent)
    ids = [i.intent_id for i, _ in sent]
    assert sorted(ids) == sorted(due) and len(ids) == len(set(ids))  # each slice once, none skipped
    for intent, at in sent:
        expected = due[intent.intent_id]
        assert expected is not None
        # Due while no worker ran: sent as the new one starts; due later: sent at its time.
        assert at - max(expected, restarted) < timedelta(seconds=1.5), (intent.intent_id, at - expected)
    routes = [r for r in await stack.routes() if r.intent_id in due]
    assert sorted(r.intent_id for r in routes) == sorted(due)  # one decision each, none repeated
    assert report.status is ParentStatus.FILLED and report.filled_quantity == 50
    filled = [
        o
        for v in pipeline.venues.values()
        for o in await v.book.all()
        if v.placed_for(o.broker_order_id) in due and o.status is OrderStatus.FILLED
    ]
    assert len(filled) == 10


async def test_kill_switches_apply_to_every_child_and_a_parent_nobody_can_take_ends_saying_why(
    stack: Stack, start_pipeline: Any
) -> None:
    """HALT is under a kill switch. An iceberg on it sends its three children one after the other, each
    rejected by the router like any intent; a split on it is refused by the split rule, tried again,
    and ends with nothing sent. Both end done_with_shortfall naming the kill switch; nothing is
    dead-lettered."""
    await stack.start(start_pipeline, {"risk": {"kill_switches": {"symbols": ["HALT"]}}})
    parents = stack.worker("parents")
    parents.scheduler.retries = (0.2, 0.2)  # type: ignore[attr-defined]
    sliced = await stack.send(symbol="HALT", quantity="30", execution={"iceberg": {"display_quantity": "10"}})
    split = await stack.send(symbol="HALT", quantity="30", execution={"split": {}})

    report = await stack.final(sliced)
    assert report.status is ParentStatus.DONE_WITH_SHORTFALL and report.filled_quantity == 0
    assert [c.status for c in report.children] == ["rejected"] * 3
    for child in report.children:
        [rejection] = await stack.child_reports(child.intent_id)
        assert (rejection.reason_code, rejection.final) == ("kill_switch", True)
    assert "kill switch" in report.reason

    report = await stack.final(split)
    assert report.status is ParentStatus.DONE_WITH_SHORTFALL and report.children == ()
    assert "30 not placed after 3 tries" in report.reason and "kill switch" in report.reason
    assert await stack.children(split) == []
    assert await stack.stored("DLQ", f"{stack.subjects.prefix}.dlq.>") == []


async def test_under_secure_roles_a_parent_is_worked_and_cancelled_with_nothing_refused(
    secured: tuple[EmbeddedNats, security.SecuritySetup],
) -> None:
    """With `mbx security init`'s users, the router, the executors and the parent-order worker each as
    its own role: a strategy's split parent fills, and its resting TWAP is cancelled through the router
    and the parent-order worker; NATS refuses none of them anything."""
    server, setup = secured
    config = unthrottled(MbxConfig())
    operator = await nats.connect(server.url, **connect_options(as_role(setup, server, "operator")))
    strategy = await nats.connect(server.url, **connect_options(as_role(setup, server, "strategy-s1")))
    await ensure_streams(jetstream(operator), Subjects())
    await write_live_config(jetstream(operator), Subjects(), config)
    workers: list[Worker] = [
        build_worker("router", as_role(setup, server, "router"), config),
        *(
            build_executor_worker(as_role(setup, server, f"executor-{b}"), b, simulated_venue(b, config), config)
            for b in config.enabled_brokers()
        ),
        build_worker("parents", as_role(setup, server, "parents"), config),
    ]
    for worker in workers:
        await worker.start()
    subjects = Subjects()
    try:
        split = intent_payload(strategy_id="s1", symbol="PEP", quantity="40", execution={"split": {}})
        limit = str((QUOTES.mid("PEP") * Decimal("0.98")).quantize(Decimal("0.01")))
        resting = intent_payload(
            strategy_id="s1",
            symbol="PEP",
            quantity="20",
            order_type="limit",
            limit_price=limit,
            execution={"twap": {"duration_s": 20, "slices": 2}},
        )
        for payload in (split, resting):
            await strategy.jetstream().publish(
                subjects.intent("s1"), json.dumps(payload).encode(), headers={"Nats-Msg-Id": payload["intent_id"]}
            )

        async def report(intent_id: str, when: Callable[[ParentReport], bool]) -> ParentReport | None:
            stored = await read_stream(operator.jetstream(), "EXECUTIONS", subjects.parent_report("*", "s1"))
            found = [ParentReport.model_validate_json(m.data) for m in stored]
            return next((r for r in found if r.intent_id == intent_id and when(r)), None)

        filled = await eventually(lambda: report(split["intent_id"], lambda r: r.final), timeout=30)
        assert filled.status is ParentStatus.FILLED and len({c.broker for c in filled.children}) >= 3
        await eventually(lambda: report(resting["intent_id"], lambda r: r.children[0].status == "accepted"), timeout=30)
        cancel = {"intent_id": resting["intent_id"], "strategy_id": "s1", "message_id": "cancel-resting-s1"}
        await strategy.jetstream().publish(
            subjects.cancel("s1"), json.dumps(cancel).encode(), headers={"Nats-Msg-Id": cancel["message_id"]}
        )
        cancelled = await eventually(lambda: report(resting["intent_id"], lambda r: r.final), timeout=30)
        assert cancelled.status is ParentStatus.CANCELLED and [c.status for c in cancelled.children] == ["cancelled"]
        assert {w.name: w.refusals for w in workers if w.refusals} == {}
    finally:
        await asyncio.gather(*(w.stop() for w in workers))
        await operator.close()
        await strategy.close()


async def test_a_parent_naming_another_strategy_is_refused_to_its_sender_and_never_worked(
    stack: Stack, start_pipeline: Any
) -> None:
    """A parent sent on algo's subject with a body naming another strategy is refused like any intent
    (an IntentRefused on algo's results, a dead letter) and never reaches the parent-order worker."""
    await stack.start(start_pipeline)
    payload = intent_payload(strategy_id="someone-else", quantity="20", execution={"split": {}})
    await stack.js.publish(
        stack.subjects.intent(STRATEGY), json.dumps(payload).encode(), headers={"Nats-Msg-Id": payload["intent_id"]}
    )
    [refusal] = await eventually(lambda: stack.stored("EXECUTIONS", stack.subjects.refusal(STRATEGY)))
    assert json.loads(refusal.data)["intent_id"] == payload["intent_id"]
    [letter] = await eventually(lambda: stack.stored("DLQ", f"{stack.subjects.prefix}.dlq.>"))
    assert "does not match strategy" in json.loads(letter.data)["error"]
    assert await stack.stored("ORDERS", f"{stack.subjects.prefix}.orders.parent.>") == []
