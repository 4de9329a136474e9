"""Executor capabilities end to end on real NATS and Postgres: a broker outage and its
recovery, the shared rate budget, cancels, reconciliation on start, snapshots and fault control."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from decimal import Decimal
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import BrokerName, CancelReject, CancelRequest, OrderStatus, PositionSnapshot, RoutePreview
from tests.builders import intent_payload, make_intent, make_route, new_intent_id
from tests.conftest import Pipeline, eventually, fetch_all, stream_messages
from tests.integration.test_walking_skeleton import publish_json
from workers.domain.config import parse_config
from workers.entry import build_executor_worker
from workers.platform.bus import publish, read_bucket
from workers.platform.settings import Settings
from workers.venues.simulated.book import KvOrderBook

pytestmark = pytest.mark.integration

TERMINAL = ("filled", "rejected", "cancelled", "expired", "failed")


async def control(nc: NatsClient, broker: str, **faults: Any) -> dict[str, Any]:
    reply = await nc.request(f"mbx.control.{broker}", json.dumps({"faults": faults}).encode(), timeout=5)
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def orders_of(db: AsyncEngine, ids: list[str]) -> list[Any]:
    return await fetch_all(db, "SELECT * FROM orders WHERE intent_id = ANY(:ids) ORDER BY attempt", ids=ids)


async def filled_everywhere(db: AsyncEngine, ids: list[str]) -> dict[str, str]:
    """intent id -> broker that filled it, once every intent has a filled order."""

    async def check() -> dict[str, str]:
        rows = await orders_of(db, ids)
        filled = {r["intent_id"]: r["broker_name"] for r in rows if r["status"] == "filled"}
        return filled if len(filled) == len(ids) else {}

    return await eventually(check, timeout=30)


async def preview_broker(nc: NatsClient) -> str:
    reply = await nc.request("mbx.api.route.preview", make_intent().model_dump_json().encode(), timeout=5)
    preview = RoutePreview.model_validate_json(reply.data)
    return str(preview.decision.broker) if preview.decision else ""


async def test_a_broker_outage_fails_over_and_routing_returns_after_recovery(
    start_pipeline: Any, nc: NatsClient, db: AsyncEngine
) -> None:
    pipeline: Pipeline = await start_pipeline(parse_config({"brokers": {"alpaca": {}, "ibkr": {}}}))
    alpaca = pipeline.venues[BrokerName.ALPACA]

    async def burst(n: int) -> list[str]:
        payloads = [intent_payload(strategy_id="outage") for _ in range(n)]
        for payload in payloads:
            await publish_json(nc, payload, strategy="outage")
        return [p["intent_id"] for p in payloads]

    before = await burst(5)
    assert set((await filled_everywhere(db, before)).values()) == {"alpaca"}

    answer = await control(nc, "alpaca", outage=True)
    assert answer["faults"]["outage"] is True
    # Published at once: the router still sees alpaca up (its next heartbeat is up to 1 s away).
    during = await burst(10)
    where = await filled_everywhere(db, during)
    assert set(where.values()) == {"ibkr"}
    failovers = await fetch_all(db, "SELECT * FROM failover_events WHERE intent_id = ANY(:ids)", ids=during)
    assert failovers, "no intent was in flight at alpaca when it went down"
    assert {(f["failed_broker"], f["reason_code"]) for f in failovers} == {("alpaca", "broker_down")}
    failed = await fetch_all(
        db, "SELECT * FROM orders WHERE intent_id = ANY(:ids) AND broker_name = 'alpaca'", ids=during
    )
    assert {r["status"] for r in failed} == {"failed"}
    assert {r["intent_id"] for r in failed} == {f["intent_id"] for f in failovers}

    # While it is down, the router no longer sends it anything, and says why.
    await eventually(lambda: _is(preview_broker(nc), "ibkr"))
    reply = await nc.request("mbx.api.route.preview", make_intent().model_dump_json().encode(), timeout=5)
    decision = RoutePreview.model_validate_json(reply.data).decision
    assert decision is not None
    excluded = {e.broker: e.reason for e in decision.excluded}
    assert excluded[BrokerName.ALPACA] == "alpaca is down: alpaca is unreachable (simulated outage)"
    while_down = await burst(3)
    assert set((await filled_everywhere(db, while_down)).values()) == {"ibkr"}
    assert not await fetch_all(db, "SELECT 1 FROM failover_events WHERE intent_id = ANY(:ids)", ids=while_down)

    await control(nc, "alpaca", outage=False)
    await eventually(lambda: _is(preview_broker(nc), "alpaca"))
    after = await burst(5)
    assert set((await filled_everywhere(db, after)).values()) == {"alpaca"}

    # Alpaca's own book: one order for each intent it filled, none for those it never got.
    book = [o.client_order_id for o in await alpaca.book.all()]
    assert sorted(c for c in book if c in set(before + during + after)) == sorted(before + after)


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)


async def test_two_replicas_stay_under_the_brokers_rate_limit_together(
    start_pipeline: Any, settings: Settings, nc: NatsClient, db: AsyncEngine
) -> None:
    """Both replicas spend from one budget in KV: the simulated broker, which counts every
    request in a sliding window, never sees more than its limit, and never answers 429."""
    config = parse_config({"brokers": {"ibkr": {"rate_limit": {"requests": 20, "per_seconds": 1}}}})
    pipeline: Pipeline = await start_pipeline(config)
    venue = pipeline.venues[BrokerName.IBKR]  # one broker, two clients
    second = build_executor_worker(settings, BrokerName.IBKR, venue, config)
    await second.start()
    pipeline.workers.append(second)
    [first] = [w for w in pipeline.workers if w.name == "executor-ibkr" and w is not second]
    payloads = [intent_payload(strategy_id="budget") for _ in range(60)]
    for payload in payloads:
        await publish_json(nc, payload, strategy="budget")
    ids = [p["intent_id"] for p in payloads]
    assert set((await filled_everywhere(db, ids)).values()) == {"ibkr"}

    assert venue.rate.refused == 0
    assert venue.rate.peak <= 20
    assert venue.rate.peak >= 10  # the budget was actually the bottleneck, not idle
    # The one venue object both executors share here counts its requests through the budget
    # handed to it last (the adapter awaits it before each request); replicas with venues of
    # their own share the KV bucket (tests/integration/test_rate_budget.py).
    assert second.budget.waited > 0  # type: ignore[attr-defined]
    assert first.handlers.stats.latency_ms > 0 and second.handlers.stats.latency_ms > 0  # type: ignore[attr-defined]
    book = [o.client_order_id for o in await venue.book.all() if o.client_order_id in set(ids)]
    assert sorted(book) == sorted(ids)


async def test_a_broker_near_its_limit_reports_low_headroom(
    start_pipeline: Any, nc: NatsClient, db: AsyncEngine
) -> None:
    config = parse_config({"brokers": {"ibkr": {"rate_limit": {"requests": 10, "per_seconds": 1}}}})
    pipeline: Pipeline = await start_pipeline(config)
    [executor] = [w for w in pipeline.workers if w.name == "executor-ibkr"]
    payloads = [intent_payload(strategy_id="headroom") for _ in range(30)]
    for payload in payloads:
        await publish_json(nc, payload, strategy="headroom")
    assert await eventually(lambda: _headroom_below(executor, 0.5), timeout=10)
    await filled_everywhere(db, [p["intent_id"] for p in payloads])
    kv = await nc.jetstream().key_value("mbx_broker_status")
    status = json.loads((await kv.get("ibkr")).value)
    assert 0 <= status["rate_limit_headroom"] <= 1


async def _headroom_below(executor: Any, level: float) -> bool:
    return bool(await executor.budget.headroom() < level)


async def cancel(nc: NatsClient, intent_id: str, strategy: str = "canceller") -> CancelRequest:
    request = CancelRequest(
        message_id=f"cancel-{new_intent_id()}", correlation_id=intent_id, intent_id=intent_id, strategy_id=strategy
    )
    await publish(nc.jetstream(), f"mbx.orders.cancel.{strategy}", request, intent_id=intent_id)
    return request


async def cancel_rejects(nc: NatsClient, intent_id: str) -> list[CancelReject]:
    found = await stream_messages(nc, "EXECUTIONS", "mbx.exec.*.cancel_rejected.*")
    return [r for r in (CancelReject.model_validate_json(m) for m in found) if r.intent_id == intent_id]


async def order_row(db: AsyncEngine, intent_id: str, status: str) -> Any:
    async def check() -> Any:
        rows = await fetch_all(db, "SELECT * FROM orders WHERE intent_id = :i AND status = :s", i=intent_id, s=status)
        return rows[0] if rows else None

    return await eventually(check)


async def test_cancel_of_an_open_order_a_filled_one_and_an_unknown_one(
    start_pipeline: Any, nc: NatsClient, db: AsyncEngine
) -> None:
    pipeline: Pipeline = await start_pipeline(parse_config({"brokers": {"alpaca": {}}}))
    resting = intent_payload(strategy_id="canceller", order_type="limit", limit_price="1.00")
    market = intent_payload(strategy_id="canceller")
    await publish_json(nc, resting, strategy="canceller")
    await publish_json(nc, market, strategy="canceller")
    await order_row(db, resting["intent_id"], "accepted")
    await order_row(db, market["intent_id"], "filled")

    await cancel(nc, resting["intent_id"])
    row = await order_row(db, resting["intent_id"], "cancelled")
    assert (row["filled_quantity"], row["broker_name"]) == (0, "alpaca")
    [at_broker] = [
        o for o in await pipeline.venues[BrokerName.ALPACA].book.all() if o.client_order_id == resting["intent_id"]
    ]
    assert at_broker.status is OrderStatus.CANCELLED

    request = await cancel(nc, market["intent_id"])
    [too_late] = await eventually(lambda: cancel_rejects(nc, market["intent_id"]))
    assert (too_late.broker, too_late.reason_code, too_late.order_status) == (
        BrokerName.ALPACA,
        "too_late_to_cancel",
        OrderStatus.FILLED,
    )
    assert too_late.message_id == f"cancel-reject-{request.message_id}"
    assert (await order_row(db, market["intent_id"], "filled"))["report_seq"] == 2  # unchanged

    ghost = new_intent_id("ghost")
    await cancel(nc, ghost)
    [unknown] = await eventually(lambda: cancel_rejects(nc, ghost))
    assert (unknown.broker, unknown.reason_code) == (None, "unknown_order")


async def test_a_cancel_that_overtakes_its_order_still_cancels_it(
    start_pipeline: Any, nc: NatsClient, db: AsyncEngine
) -> None:
    """A cancel can reach the router, or the executor, before the order it cancels is recorded
    (being placed, or placed by a delivery that died before recording it): it waits for the
    order rather than being refused as unknown."""
    pipeline: Pipeline = await start_pipeline(parse_config({"brokers": {"alpaca": {}}}))
    pipeline.venues[BrokerName.ALPACA].faults.latency_ms = 1500  # the placement is under way a while
    slow = intent_payload(strategy_id="canceller", order_type="limit", limit_price="1.00")
    await publish_json(nc, slow, strategy="canceller")

    async def routed() -> bool:
        routes = await stream_messages(nc, "ROUTES", "mbx.routes.alpaca.*")
        return any(json.loads(m)["intent_id"] == slow["intent_id"] for m in routes)

    await eventually(routed)
    await cancel(nc, slow["intent_id"])  # reaches the router before the ledger has the order

    # Straight to the executor, before the route itself: as after a crash between placing and recording.
    pipeline.venues[BrokerName.ALPACA].faults.latency_ms = 0
    early = make_route(make_intent(strategy_id="canceller", order_type="limit", limit_price="1.00"))
    request = CancelRequest(
        message_id=f"cancel-{early.intent_id}",
        correlation_id=early.intent_id,
        intent_id=early.intent_id,
        strategy_id="canceller",
    )
    await publish(nc.jetstream(), "mbx.cancels.alpaca", request, intent_id=early.intent_id)
    await publish(nc.jetstream(), "mbx.routes.alpaca", early, intent_id=early.intent_id)

    for intent_id in (slow["intent_id"], early.intent_id):
        row = await order_row(db, intent_id, "cancelled")
        assert row["broker_name"] == "alpaca"
        assert await cancel_rejects(nc, intent_id) == []
    cancelled = [o for o in await pipeline.venues[BrokerName.ALPACA].book.all() if o.status is OrderStatus.CANCELLED]
    assert {slow["intent_id"], early.intent_id} <= {o.client_order_id for o in cancelled}


async def test_an_executor_settles_what_changed_at_the_broker_while_it_was_down(
    start_pipeline: Any, settings: Settings, nc: NatsClient, db: AsyncEngine
) -> None:
    """A resting order fills while no executor runs; the next one reports it before new work."""
    pipeline: Pipeline = await start_pipeline(parse_config({"brokers": {"ibkr": {}}}))
    venue = pipeline.venues[BrokerName.IBKR]
    resting = intent_payload(strategy_id="recon", order_type="limit", limit_price="1.00", quantity="10")
    await publish_json(nc, resting, strategy="recon")
    await order_row(db, resting["intent_id"], "accepted")
    [executor] = [w for w in pipeline.workers if w.name == "executor-ibkr"]
    assert resting["intent_id"] in {e.intent_id for e in await executor.ledger.open_orders(BrokerName.IBKR)}  # type: ignore[attr-defined]
    await executor.stop()
    pipeline.workers.remove(executor)

    venue.book = KvOrderBook(nc.jetstream, "mbx_sim_ibkr")  # the broker, reached without an executor
    [order] = [o for o in await venue.book.all() if o.client_order_id == resting["intent_id"]]
    await venue.trade(order.broker_order_id)  # the market reaches the limit while we are away

    replacement = build_executor_worker(settings, BrokerName.IBKR, venue, pipeline.config)
    await replacement.start()
    pipeline.workers.append(replacement)
    row = await order_row(db, resting["intent_id"], "filled")
    assert (row["filled_quantity"], row["average_price"]) == (10, 1)
    fills = await fetch_all(db, "SELECT * FROM trade_logs WHERE intent_id = :i", i=resting["intent_id"])
    assert [(f["quantity"], f["price"]) for f in fills] == [(10, 1)]
    assert await replacement.ledger.open_orders(BrokerName.IBKR) == [] or all(  # type: ignore[attr-defined]
        e.intent_id != resting["intent_id"]
        for e in await replacement.ledger.open_orders(BrokerName.IBKR)  # type: ignore[attr-defined]
    )


async def test_position_snapshot_on_request_and_on_the_stream(
    pipeline: Pipeline, nc: NatsClient, db: AsyncEngine
) -> None:
    payload = intent_payload(symbol="SNAP", quantity="7")
    await publish_json(nc, payload)
    await order_row(db, payload["intent_id"], "filled")
    reply = await nc.request("mbx.api.positions.alpaca.refresh", b"", timeout=5)
    snapshot = PositionSnapshot.model_validate_json(reply.data)
    assert snapshot.broker is BrokerName.ALPACA
    [line] = [p for p in snapshot.positions if p.symbol == "SNAP"]
    assert line.quantity >= 7
    stored = await stream_messages(nc, "POSITIONS", "mbx.positions.alpaca")
    # The answer is published too (a refresh after the fill may follow it on the stream).
    assert snapshot.message_id in {PositionSnapshot.model_validate_json(m).message_id for m in stored}


async def test_faults_are_switched_at_runtime_and_bad_requests_get_a_reason(pipeline: Pipeline, nc: NatsClient) -> None:
    answer = await control(nc, "coinbase", reject_next=2, latency_ms=3)
    assert answer["faults"]["reject_next"] == 2
    assert pipeline.venues[BrokerName.COINBASE].faults.latency_ms == 3
    bad = await control(nc, "coinbase", explode=True)
    assert "unknown fault 'explode'" in bad["error"]
    reset = await control(nc, "coinbase", reject_next=0, latency_ms=0)
    assert reset["faults"]["reject_next"] == 0
    await asyncio.sleep(0)


async def test_the_poller_and_a_cancel_racing_on_one_order_report_every_change(
    pipeline: Pipeline, nc: NatsClient, db: AsyncEngine
) -> None:
    """Two writers report one working order at once from different broker states (a partial
    fill seen by the poller, the cancel seen by the cancel handler). Their reports never share
    a sequence number with different content: the order ends cancelled, with its fill, in the
    ledger, on the bus and in Postgres."""
    from workers.executor.app import ExecutorWorker

    payload = intent_payload(order_type="limit", limit_price="1.00", strategy_id="racer")
    await publish_json(nc, payload, strategy="racer")
    venue = pipeline.venues[BrokerName.ALPACA]
    [executor] = [w for w in pipeline.workers if isinstance(w, ExecutorWorker) and w.venue.broker == "alpaca"]

    entry = await eventually(lambda: working_entry(executor, payload["intent_id"]))
    await venue.trade(entry.broker_order_id, Decimal(4))
    partial = await venue.get_order(entry.broker_order_id)
    cancelled = await venue.cancel_order(entry.broker_order_id)
    assert partial is not None and partial.status is OrderStatus.PARTIALLY_FILLED
    await asyncio.gather(
        executor.handlers.advance(payload["intent_id"], partial),
        executor.handlers.advance(payload["intent_id"], cancelled),
    )
    final = await executor.ledger.get(payload["intent_id"])
    assert final is not None and final.status is OrderStatus.CANCELLED
    [order] = await eventually(lambda: _order_in(db, payload["intent_id"], "cancelled"))
    assert order["filled_quantity"] == 4
    reports = [
        json.loads(m)
        for m in await stream_messages(nc, "EXECUTIONS", "mbx.exec.alpaca.>")
        if json.loads(m)["intent_id"] == payload["intent_id"]
    ]
    seqs = [r["report_seq"] for r in reports]
    assert len(seqs) == len(set(seqs))
    assert reports[-1]["status"] == "cancelled" and reports[-1]["final"]


async def working_entry(executor: Any, intent_id: str) -> Any:
    """The intent's ledger entry once its order works at the broker."""
    entry = await executor.ledger.get(intent_id)
    return entry if entry is not None and entry.working else None


async def _order_in(db: AsyncEngine, intent_id: str, status: str) -> list[Any]:
    rows = await fetch_all(db, "SELECT * FROM orders WHERE intent_id = :i AND status = :s", i=intent_id, s=status)
    return rows


async def test_a_stale_route_delivery_never_records_a_state_whose_report_lost_its_number(
    pipeline: Pipeline, nc: NatsClient
) -> None:
    """The chaos test's race: a cancel reports a partly filled order cancelled (report 2) while a
    redelivered route, which saw the order only partly filled, records it. The route's report 2
    loses its number to the cancel's; it must not record "partially filled" under it (which made
    the cancel report "cancelled" a second time, as report 3). One final report, whoever wins."""
    from workers.executor.app import ExecutorWorker

    payload = intent_payload(order_type="limit", limit_price="1.00", strategy_id="stale")
    await publish_json(nc, payload, strategy="stale")
    venue = pipeline.venues[BrokerName.ALPACA]
    [executor] = [w for w in pipeline.workers if isinstance(w, ExecutorWorker) and w.venue.broker == "alpaca"]
    handlers = executor.handlers

    accepted = await eventually(lambda: working_entry(executor, payload["intent_id"]))
    known, revision = await executor.ledger.get_versioned(payload["intent_id"])
    assert known is not None and known.decision is not None
    await venue.trade(accepted.broker_order_id, Decimal(4))
    partial = await venue.get_order(accepted.broker_order_id)
    assert partial is not None and partial.status is OrderStatus.PARTIALLY_FILLED

    # The stale route delivery records what it saw just after the cancel published its reports
    # and just before the cancel records them.
    put = executor.ledger.put
    stale_done = False

    async def put_after_the_stale_delivery(*args: Any, **kwargs: Any) -> int:
        nonlocal stale_done
        if not stale_done:
            stale_done = True
            with contextlib.suppress(Exception):  # it may ask for a redelivery: fine
                await handlers._record_order(known.decision, partial, known, revision)
        return await put(*args, **kwargs)

    executor.ledger.put = put_after_the_stale_delivery  # type: ignore[method-assign]
    try:
        await handlers.cancel(CancelRequest(intent_id=payload["intent_id"], strategy_id="stale", reason="race"))
    finally:
        executor.ledger.put = put  # type: ignore[method-assign]
    assert stale_done
    final = await executor.ledger.get(payload["intent_id"])
    assert final is not None and (final.status, final.filled_quantity) == (OrderStatus.CANCELLED, 4)
    reports = [
        json.loads(m)
        for m in await stream_messages(nc, "EXECUTIONS", "mbx.exec.alpaca.>")
        if json.loads(m)["intent_id"] == payload["intent_id"]
    ]
    finals = [r for r in reports if r["final"]]
    assert [r["status"] for r in finals] == ["cancelled"], reports
    seqs = [r["report_seq"] for r in reports]
    assert len(seqs) == len(set(seqs))


async def test_an_order_whose_first_reports_went_out_unrecorded_is_still_recorded(
    pipeline: Pipeline, nc: NatsClient
) -> None:
    """A delivery published "accepted" and died before writing the ledger; the order then part
    filled. The next delivery's reports differ from what is out (report 1 was built from the
    unfilled order): it still records the order, then reports what changed, so a cancel or the
    poller can find it."""
    from workers.executor.app import ExecutorWorker

    payload = intent_payload(order_type="limit", limit_price="1.00", strategy_id="unrecorded")
    await publish_json(nc, payload, strategy="unrecorded")
    venue = pipeline.venues[BrokerName.ALPACA]
    [executor] = [w for w in pipeline.workers if isinstance(w, ExecutorWorker) and w.venue.broker == "alpaca"]

    recorded = await eventually(lambda: working_entry(executor, payload["intent_id"]))
    decision = recorded.decision
    assert decision is not None
    # As if the ledger write never happened (the delivery died after publishing).
    bucket = pipeline.settings.topology.order_ledger_bucket
    kv = await nc.jetstream().key_value(bucket)
    # read_bucket, not kv.keys(): nats-py's listing can miss every key under load (NoKeysError).
    for key, _ in await read_bucket(nc.jetstream(), bucket):
        if key.endswith(base64.urlsafe_b64encode(payload["intent_id"].encode()).decode().rstrip("=")):
            await kv.purge(key)
    assert await executor.ledger.get(payload["intent_id"]) is None
    await venue.trade(recorded.broker_order_id, Decimal(4))
    partial = await venue.get_order(recorded.broker_order_id)
    assert partial is not None

    await executor.handlers._record_order(decision, partial, None, 0)
    entry = await executor.ledger.get(payload["intent_id"])
    assert entry is not None and entry.working
    assert (entry.status, entry.filled_quantity, entry.fill_count) == (OrderStatus.PARTIALLY_FILLED, 4, 1)
