"""Parent orders in the audit trail: the aggregator keeps each parent's newest report in
``parent_orders`` and links every child order to its parent (``orders.parent_intent_id``),
whatever order routes, reports and parent reports arrive in; `mbx explain` tells the parent's
story and a child's parent; migration 0011 keeps a populated database's orders."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import (
    BrokerName,
    ChildOrder,
    ExecutionReport,
    OrderStatus,
    ParentReport,
    ParentStatus,
    RouteDecision,
)
from tests.builders import make_intent, make_route, new_intent_id
from tests.conftest import eventually, fetch_all
from tests.integration.test_cli import mbx
from tests.servers import Servers
from workers.aggregator.app import build_aggregator
from workers.aggregator.persistence import AuditStore, Envelope
from workers.domain.parents import child_id
from workers.domain.reports import report
from workers.domain.venue import VenueOrder
from workers.platform import bus
from workers.platform.db import migrate
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration

STRATEGY = "parents"


def child_route(parent: str, slice_no: int, part: int, broker: BrokerName, quantity: str = "5") -> RouteDecision:
    """The route of a child intent as the parent-order worker sends it (metadata parent and slice)."""
    intent = make_intent(
        intent_id=child_id(parent, slice_no, part),
        strategy_id=STRATEGY,
        quantity=quantity,
        metadata={"parent": parent, "slice": str(slice_no), "split": f"{broker}: {quantity} of 10 (score 0.9)"},
    )
    return make_route(intent, broker, rule="preference", reason=f"the strategy asked for {broker}")


def filled(route: RouteDecision, seq: int, status: OrderStatus, quantity: str, price: str) -> ExecutionReport:
    order = VenueOrder(f"bo-{route.intent_id}", route.intent_id, status, Decimal(route.intent.quantity or 0))
    order.filled_quantity, order.average_price = Decimal(quantity), Decimal(price)
    return report(route, status, seq, order)


def refused(parent: str, slice_no: int, part: int) -> ExecutionReport:
    """A child the router refused before choosing a broker: a report, no route."""
    intent_id = child_id(parent, slice_no, part)
    return ExecutionReport(
        message_id=f"exec-{intent_id}-router-rejected-1",
        correlation_id=intent_id,
        intent_id=intent_id,
        strategy_id=STRATEGY,
        broker=None,
        status=OrderStatus.REJECTED,
        client_order_id=intent_id,
        symbol="AAPL",
        asset_class="equity",
        side="buy",
        quantity=Decimal(5),
        reason_code="no_eligible_broker",
        reason="no broker can take it",
        final=True,
    )


def parent_report(parent: str, seq: int, status: ParentStatus, filled_quantity: str, **overrides: Any) -> ParentReport:
    """The parent's report, its id derived from the parent id and report_seq as the worker does."""
    children = (
        ChildOrder(intent_id=child_id(parent, 0, 0), broker=BrokerName.ALPACA, slice_number=0, quantity=Decimal(5),
                   filled_quantity=Decimal(min(int(filled_quantity), 5)), status="filled"),
        ChildOrder(intent_id=child_id(parent, 0, 1), broker=BrokerName.IBKR, slice_number=0, quantity=Decimal(5),
                   filled_quantity=Decimal(max(int(filled_quantity) - 5, 0)), status="accepted"),
        ChildOrder(intent_id=child_id(parent, 1, 0), slice_number=1, quantity=Decimal(5),
                   status="rejected" if seq >= 3 else "planned"),
    )  # fmt: skip
    fields: dict[str, Any] = {
        "message_id": f"parent-{parent}-{seq}",
        "correlation_id": parent,
        "intent_id": parent,
        "strategy_id": STRATEGY,
        "symbol": "AAPL",
        "side": "buy",
        "status": status,
        "quantity": Decimal(15),
        "filled_quantity": Decimal(filled_quantity),
        "children": children,
        "report_seq": seq,
        "execution": {"split": {"max_brokers": 2}, "twap": {"duration_s": 60, "slices": 3}},
    }
    return ParentReport(**(fields | overrides))


SEQ_3 = {"average_price": Decimal("100.40"), "arrival_price": Decimal("100.25"), "slippage_bps": 14.96}


async def parent_row(db: AsyncEngine, parent: str) -> dict[str, Any]:
    [row] = await fetch_all(db, "SELECT * FROM parent_orders WHERE parent_intent_id = :p", p=parent)
    return dict(row)


async def links(db: AsyncEngine, *intent_ids: str) -> dict[str, str | None]:
    rows = await fetch_all(
        db, "SELECT intent_id, parent_intent_id FROM orders WHERE intent_id = ANY(:ids)", ids=list(intent_ids)
    )
    return {r["intent_id"]: r["parent_intent_id"] for r in rows}


@pytest.fixture
async def store(isolated: Settings) -> Any:
    engine = make_engine(isolated.sqlalchemy_url(), pool_size=1)
    yield AuditStore(engine)
    await engine.dispose()


async def test_the_newest_parent_report_is_kept_and_every_child_order_is_linked_in_any_arrival_order(
    store: AuditStore,
) -> None:
    """One message a transaction: a child stored from its route is linked at once; one stored
    first from its report, and one the router refused (no route at all), are linked by the
    parent's next report; a stale report, a redelivered one and an intent that only claims a
    parent in its tags change nothing."""
    parent = new_intent_id("parent")
    first, second = child_route(parent, 0, 0, BrokerName.ALPACA), child_route(parent, 0, 1, BrokerName.IBKR)
    impostor = make_route(
        make_intent(strategy_id=STRATEGY, metadata={"parent": parent, "slice": "0", "split": "mine"}),
        BrokerName.ALPACA,
    )
    assert await store.apply([Envelope("test", first)]) == 1  # linked from its route, no parent report yet
    assert await links(store.engine, first.intent_id) == {first.intent_id: parent}
    arrivals: list[Any] = [
        report(second, OrderStatus.ACCEPTED, 2),  # before its route: no link yet
        parent_report(parent, 1, ParentStatus.WORKING, "0"),
        second,
        filled(first, 3, OrderStatus.FILLED, "5", "100.40"),
        refused(parent, 1, 0),
        parent_report(parent, 3, ParentStatus.PARTIALLY_FILLED, "5", **SEQ_3),
        parent_report(parent, 2, ParentStatus.WORKING, "0"),  # late: superseded by 3
        impostor,
    ]
    for message in arrivals:
        assert await store.apply([Envelope("test", message)]) == 1
    assert await store.apply([Envelope("test", parent_report(parent, 3, ParentStatus.PARTIALLY_FILLED, "5"))]) == 0

    row = await parent_row(store.engine, parent)
    newest = parent_report(parent, 3, ParentStatus.PARTIALLY_FILLED, "5", **SEQ_3)
    assert {k: row[k] for k in ("strategy_id", "symbol", "side", "status", "report_seq", "execution", "reason")} == {
        "strategy_id": STRATEGY,
        "symbol": "AAPL",
        "side": "buy",
        "status": "partially_filled",
        "report_seq": 3,
        "execution": {"split": {"max_brokers": 2}, "twap": {"duration_s": 60.0, "slices": 3, "jitter_pct": 0.0}},
        "reason": None,
    }
    assert (row["quantity"], row["filled_quantity"], row["average_price"]) == (15, 5, Decimal("100.40"))
    assert (row["arrival_price"], row["slippage_bps"]) == (Decimal("100.25"), 14.96)
    assert row["children"] == [c.model_dump(mode="json") for c in newest.children]
    assert await links(store.engine, first.intent_id, second.intent_id, refused(parent, 1, 0).intent_id) == {
        first.intent_id: parent,
        second.intent_id: parent,
        refused(parent, 1, 0).intent_id: parent,
    }
    assert await links(store.engine, impostor.intent_id) == {impostor.intent_id: None}
    decisions = await fetch_all(
        store.engine,
        "SELECT intent_id, decision ->> 'split' AS split FROM multi_broker_routes WHERE intent_id = ANY(:ids)",
        ids=[first.intent_id, impostor.intent_id],
    )
    # A split child's decision record keeps why the split gave it its broker; another intent's tags are its own.
    assert {r["intent_id"]: r["split"] for r in decisions} == {
        first.intent_id: "alpaca: 5 of 10 (score 0.9)",
        impostor.intent_id: None,
    }


async def test_a_batch_holding_a_parent_report_and_its_childrens_first_messages_links_them_all(
    store: AuditStore,
) -> None:
    """The parent's report is applied after the batch's routes and reports, so children first
    stored in the same transaction are linked too; the newest of two reports in one batch wins."""
    parent = new_intent_id("parent")
    first, second = child_route(parent, 0, 0, BrokerName.ALPACA), child_route(parent, 0, 1, BrokerName.IBKR)
    batch = [
        parent_report(parent, 4, ParentStatus.FILLED, "15", final=True, **SEQ_3),
        parent_report(parent, 3, ParentStatus.PARTIALLY_FILLED, "5"),
        report(second, OrderStatus.FILLED, 2),
        refused(parent, 1, 0),
        first,
    ]
    assert await store.apply([Envelope("test", m) for m in batch]) == len(batch)
    row = await parent_row(store.engine, parent)
    assert (row["status"], row["report_seq"], row["filled_quantity"]) == ("filled", 4, 15)
    assert set((await links(store.engine, first.intent_id, second.intent_id)).values()) == {parent}
    assert await links(store.engine, refused(parent, 1, 0).intent_id) == {refused(parent, 1, 0).intent_id: parent}


async def test_mbx_explain_tells_a_parents_story_and_a_childs_parent(store: AuditStore, isolated: Settings) -> None:
    """The parent: its status, filled of quantity, arrival price and slippage, then each child in
    slice order with its broker, status, fill and route; a child names its parent and slice."""
    parent = new_intent_id("parent")
    first, second = child_route(parent, 0, 0, BrokerName.ALPACA), child_route(parent, 0, 1, BrokerName.IBKR)
    messages: list[Any] = [
        first,
        second,
        filled(first, 2, OrderStatus.FILLED, "5", "100.40"),
        report(second, OrderStatus.ACCEPTED, 2),
        refused(parent, 1, 0),
        parent_report(parent, 3, ParentStatus.PARTIALLY_FILLED, "5", **SEQ_3),
    ]
    await store.apply([Envelope("test", m) for m in messages])
    env = {"MBX_DATABASE_URL": isolated.database_url or ""}

    code, out = await mbx("explain", parent, env=env)
    flat = " ".join(out.split())
    assert code == 0, out
    assert f"parent order {parent} ({STRATEGY}): buy 15 AAPL, twap 1m in 3 slices, split over up to 2 brokers" in flat
    assert "status: partially_filled; 5 of 15 filled @ 100.4" in flat
    assert "arrival price: 100.25; slippage against it: +14.96 bps" in flat
    assert "filled by broker: alpaca 5" in flat
    assert (
        f"slice 0 {first.intent_id} at alpaca: filled 5/5 @ 100.4; routed by preference: the strategy asked for "
        "alpaca; split: alpaca: 5 of 10 (score 0.9)"
    ) in flat
    assert f"slice 0 {second.intent_id} at ibkr: accepted 0/5; routed by preference" in flat
    assert f"slice 1 {child_id(parent, 1, 0)}: rejected 0/5; refused by the router: no broker can take it" in flat
    assert flat.index(first.intent_id) < flat.index(second.intent_id) < flat.index(child_id(parent, 1, 0))

    code, out = await mbx("explain", second.intent_id, env=env)
    flat = " ".join(out.split())
    assert code == 0, out
    assert f"child of parent order {parent}, slice 0 (mbx explain {parent} for the whole order)" in flat
    assert "attempt 1: routed to ibkr by preference" in flat and "split: ibkr: 5 of 10 (score 0.9)" in flat

    code, out = await mbx("explain", parent, "--json", env=env)
    story = json.loads(out)
    assert story["parent"]["status"] == "partially_filled"
    assert [c["intent_id"] for c in story["children"]] == [first.intent_id, second.intent_id, child_id(parent, 1, 0)]


async def test_the_aggregator_takes_parent_reports_from_the_bus_and_dead_letters_none(
    isolated: Settings, nc: NatsClient
) -> None:
    """Published on exec.parent.<status>.<strategy> beside the children's routes and reports, the
    parent's reports are stored as parent reports (not refused as execution reports), a stale one
    published later changes nothing, and the child's order is linked."""
    subjects = isolated.subjects
    js = nc.jetstream()
    await bus.ensure_streams(js, subjects)
    engine = make_engine(isolated.sqlalchemy_url(), pool_size=2)
    aggregator = build_aggregator(isolated, engine)
    await aggregator.start()
    try:
        parent = new_intent_id("parent")
        route = child_route(parent, 0, 0, BrokerName.ALPACA)
        await bus.publish(js, subjects.route(route.broker, STRATEGY), route, intent_id=route.intent_id)
        done = filled(route, 2, OrderStatus.FILLED, "5", "100.40")
        await bus.publish(js, subjects.execution(done.broker, done.status, STRATEGY), done, intent_id=done.intent_id)
        for seq, status, quantity in [(1, ParentStatus.WORKING, "0"), (3, ParentStatus.PARTIALLY_FILLED, "5")]:
            message = parent_report(parent, seq, status, quantity)
            await bus.publish(js, subjects.parent_report(status, STRATEGY), message, intent_id=parent)

        async def stored() -> bool:
            rows = await fetch_all(engine, "SELECT report_seq FROM parent_orders WHERE parent_intent_id = :p", p=parent)
            return bool(rows) and rows[0]["report_seq"] == 3

        await eventually(stored)
        stale = parent_report(parent, 2, ParentStatus.WORKING, "0")
        await bus.publish(js, subjects.parent_report(ParentStatus.WORKING, STRATEGY), stale, intent_id=parent)
        await eventually(lambda: _in_inbox(engine, stale.message_id))
        assert (await parent_row(engine, parent))["status"] == "partially_filled"
        assert await eventually(lambda: links(engine, route.intent_id)) == {route.intent_id: parent}
    finally:
        await aggregator.stop()
    letters = await bus.read_stream(js, subjects.stream_name("DLQ"), subjects.dlq(">"))
    assert letters == []


async def _in_inbox(engine: AsyncEngine, message_id: str) -> bool:
    return bool(await fetch_all(engine, "SELECT 1 FROM inbox WHERE message_id = :m", m=message_id))


# `mbx submit` following a parent ------------------------------------------------------------


async def submitted(nc: NatsClient, isolated: Settings, intent_id: str) -> bool:
    """The intent is in ORDERS: `mbx submit` follows the parent's reports from now on."""
    stored = await bus.read_stream(
        nc.jetstream(), isolated.subjects.stream_name("ORDERS"), f"{isolated.subject_prefix}.>"
    )
    return any(json.loads(m.data).get("intent_id") == intent_id for m in stored)


async def run_submit(
    isolated: Settings, servers: Servers, intent_id: str, *flags: str
) -> asyncio.Task[tuple[int, str]]:
    env = {"MBX_NATS_URL": servers.nats_url, "MBX_SUBJECT_PREFIX": isolated.subject_prefix}
    args = ("submit", "--symbol", "AAPL", "--quantity", "15", "--strategy", STRATEGY, "--intent-id", intent_id)
    return asyncio.create_task(mbx(*args, *flags, "--timeout", "30", env=env))


async def test_submit_prints_a_parents_progress_from_its_reports_until_the_final_one(
    isolated: Settings, servers: Servers, nc: NatsClient
) -> None:
    """With the parent-order worker played by the test: every report that changes what is shown is
    printed (filled of quantity, children by broker), a stale one is not, and the final report
    ends the command with the parent's outcome."""
    js = nc.jetstream()
    await bus.ensure_streams(js, isolated.subjects)
    parent = new_intent_id("parent")
    command = await run_submit(isolated, servers, parent, "--split", "--twap", "20s/3")
    await eventually(lambda: submitted(nc, isolated, parent), timeout=30)
    reports = [
        parent_report(parent, 1, ParentStatus.WORKING, "0"),
        parent_report(parent, 3, ParentStatus.PARTIALLY_FILLED, "5", average_price=Decimal("100.40")),
        parent_report(parent, 2, ParentStatus.WORKING, "0"),  # late: not shown
        parent_report(parent, 4, ParentStatus.FILLED, "15", final=True, **SEQ_3),
    ]
    for message in reports:
        subject = isolated.subjects.parent_report(message.status, STRATEGY)
        await bus.publish(js, subject, message, intent_id=parent, strategy_id=STRATEGY)
    code, out = await command
    flat = " ".join(out.split())
    assert code == 0, out
    assert f"submitted parent order {parent}" in flat
    assert "twap 20s in 3 slices, split over up to 5 brokers" in flat
    assert "working: 0 of 15 (0%); alpaca 1 (0), ibkr 1 (0), no broker: planned 1" in flat
    assert "partially_filled: 5 of 15 (33%) @ 100.4; alpaca 1 (5), ibkr 1 (0), no broker: rejected 1" in flat
    assert flat.count("working:") == 1
    assert (
        "filled: 15 of 15 @ 100.4 (arrival 100.25, slippage +14.96 bps); "
        "children: alpaca 1 (5), ibkr 1 (10), no broker: rejected 1"
    ) in flat
    assert flat.count("15 of 15") == 1  # the final report is told once, as the outcome


async def test_submit_of_a_parent_refused_outright_ends_with_the_refusal(
    isolated: Settings, servers: Servers, nc: NatsClient
) -> None:
    """An execution report that ends the parent's own intent (refused before any child) ends the wait."""
    js = nc.jetstream()
    await bus.ensure_streams(js, isolated.subjects)
    parent = new_intent_id("parent")
    command = await run_submit(isolated, servers, parent, "--iceberg", "5")
    await eventually(lambda: submitted(nc, isolated, parent), timeout=30)
    refusal = refused(parent, 0, 0).model_copy(
        update={"intent_id": parent, "client_order_id": parent, "message_id": f"exec-{parent}-router-rejected-1"}
    )
    await bus.publish(js, isolated.subjects.execution(None, "rejected", STRATEGY), refusal, intent_id=parent)
    code, out = await command
    assert code == 1, out
    assert "rejected at no broker (no broker can take it)" in " ".join(out.split())


async def test_cancel_of_a_parent_ends_with_its_cancelled_report(
    isolated: Settings, servers: Servers, nc: NatsClient
) -> None:
    """`mbx cancel <parent>` sends a CancelRequest with the parent's id and ends with the parent's
    cancelled report (it was read as an execution report, and failed), saying what filled."""
    js = nc.jetstream()
    await bus.ensure_streams(js, isolated.subjects)
    parent = new_intent_id("parent")
    env = {"MBX_NATS_URL": servers.nats_url, "MBX_SUBJECT_PREFIX": isolated.subject_prefix}
    command = asyncio.create_task(mbx("cancel", parent, "--strategy", STRATEGY, "--timeout", "30", env=env))
    await eventually(lambda: submitted(nc, isolated, parent), timeout=30)
    cancelled = parent_report(parent, 5, ParentStatus.CANCELLED, "5", final=True, reason="cancelled: cli")
    subject = isolated.subjects.parent_report(ParentStatus.CANCELLED, STRATEGY)
    await bus.publish(js, subject, cancelled, intent_id=parent, strategy_id=STRATEGY)
    code, out = await command
    assert code == 0, out
    flat = " ".join(out.split())
    assert f"cancelled parent order {parent}: 5 of 15 filled before the cancel; children: alpaca 1 (5)" in flat


async def test_a_split_twap_parent_from_mbx_submit_to_mbx_explain_on_the_whole_stack(
    start_pipeline: Any, isolated: Settings, servers: Servers
) -> None:
    """The router, executors, aggregator and parent-order worker running: `mbx submit --split --twap`
    prints the parent's progress and ends filled; Postgres then holds the parent's final report with
    every child order linked, and `mbx explain` tells the parent's and a child's story."""
    await start_pipeline(own_settings=isolated)
    parent = new_intent_id("e2e")
    env = {
        "MBX_NATS_URL": servers.nats_url,
        "MBX_SUBJECT_PREFIX": isolated.subject_prefix,
        "MBX_DATABASE_URL": isolated.database_url or "",
    }
    args = ("submit", "--symbol", "AAPL", "--quantity", "40", "--split", "--twap", "10s/2", "--intent-id", parent)
    code, out = await mbx(*args, "--strategy", STRATEGY, "--timeout", "60", env=env)
    flat = " ".join(out.split())
    assert code == 0, out
    assert "twap 10s in 2 slices, split over up to 5 brokers" in flat
    assert "filled: 40 of 40 @" in flat

    engine = make_engine(isolated.sqlalchemy_url(), pool_size=1)
    try:

        async def final_stored() -> dict[str, Any] | None:
            rows = await fetch_all(engine, "SELECT * FROM parent_orders WHERE parent_intent_id = :p", p=parent)
            return dict(rows[0]) if rows and rows[0]["status"] == "filled" else None

        row = await eventually(final_stored, timeout=30)
        children = [c["intent_id"] for c in row["children"]]
        assert {c["slice_number"] for c in row["children"]} == {0, 1}

        async def all_linked() -> bool:
            linked = await fetch_all(
                engine, "SELECT DISTINCT intent_id FROM orders WHERE parent_intent_id = :p", p=parent
            )
            return sorted(r["intent_id"] for r in linked) == sorted(children)

        await eventually(all_linked, timeout=30)
    finally:
        await engine.dispose()

    code, out = await mbx("explain", parent, env=env)
    flat = " ".join(out.split())
    assert code == 0, out
    assert "status: filled; 40 of 40 filled @" in flat
    assert flat.count("slice 0 ") >= 1 and flat.count("slice 1 ") >= 1
    assert flat.count("; routed by ") == len(children)
    code, out = await mbx("explain", children[-1], env=env)
    assert f"child of parent order {parent}, slice 1" in " ".join(out.split()), out


# Migration 0011 on a populated database --------------------------------------------------------


ORDER = (
    "INSERT INTO orders (intent_id, strategy_id, broker_name, client_order_id, symbol, asset_class, side, "
    "order_type, quantity, status, report_seq) VALUES (:i, 's', 'alpaca', :i, 'AAPL', 'equity', 'buy', 'market', "
    "10, 'filled', 3)"
)


async def test_migration_0011_keeps_existing_orders_and_can_be_run_again_after_an_interrupted_build(
    fresh_database: str,
) -> None:
    """Orders stored before 0011 keep every value, with no parent; the index is valid; a run
    interrupted after the column and a half-built index were made completes when run again;
    a downgrade keeps the orders too."""
    engine = create_engine(fresh_database)
    try:
        await asyncio.to_thread(migrate.upgrade, fresh_database, "0010")
        with engine.begin() as conn:
            conn.execute(text(ORDER), [{"i": f"old-{n}"} for n in range(50)])
            # What an interrupted concurrent build leaves: the column, and an index marked invalid.
            conn.execute(text("ALTER TABLE orders ADD COLUMN parent_intent_id VARCHAR(48)"))
            conn.execute(text("CREATE INDEX ix_orders_parent_intent_id ON orders (parent_intent_id)"))
            conn.execute(
                text("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'ix_orders_parent_intent_id'::regclass")
            )
        before = _orders(engine)
        await asyncio.to_thread(migrate.upgrade, fresh_database)
        assert _orders(engine) == before
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM orders WHERE parent_intent_id IS NOT NULL")).scalar() == 0
            valid = conn.execute(
                text("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_orders_parent_intent_id'::regclass")
            ).scalar()
        assert valid is True
        assert "parent_orders" in inspect(engine).get_table_names()
        await asyncio.to_thread(migrate.check, fresh_database)

        await asyncio.to_thread(migrate.downgrade, fresh_database, "0010")
        assert "parent_intent_id" not in {c["name"] for c in inspect(engine).get_columns("orders")}
        assert "parent_orders" not in inspect(engine).get_table_names()
        assert _orders(engine) == before
    finally:
        engine.dispose()


def _orders(engine: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text("SELECT intent_id, broker_name, status, quantity, report_seq, created_at FROM orders ORDER BY id")
            )
        ]
