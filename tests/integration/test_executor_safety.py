"""No double order at the broker: the book outlives the executor, and ambiguous outcomes are
resolved by looking the order up, never by placing it blindly again."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import REPLAY_HEADER, BrokerName, ExecutionReport, Subjects
from tests.builders import OPTION, intent_payload, make_intent
from tests.conftest import Pipeline, eventually, fetch_all, stream_messages
from tests.integration.test_walking_skeleton import final_order, publish_json
from workers.domain.config import parse_config
from workers.domain.venue import VenueDuplicate
from workers.entry import build_executor_worker
from workers.executor.same_shape import SameShapeGuard
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings
from workers.platform.topology import Topology

pytestmark = pytest.mark.integration


async def test_the_simulated_book_outlives_the_executor(settings: Settings) -> None:
    """A new executor process (a new venue object) sees the orders the old one placed."""
    intent = make_intent()
    first = build_executor_worker(settings, BrokerName.ALPACA)
    await first.start()
    try:
        placed = await first.venue.place_order(intent, intent.intent_id)
    finally:
        await first.stop()
    second = build_executor_worker(settings, BrokerName.ALPACA)
    await second.start()
    try:
        with pytest.raises(VenueDuplicate):
            await second.venue.place_order(intent, intent.intent_id)
        assert await second.venue.locate(intent, intent.intent_id, placed.submitted_at) == placed  # type: ignore[arg-type]
    finally:
        await second.stop()


async def orders_at(pipeline: Pipeline, broker: BrokerName, match: Any) -> list[Any]:
    return [o for o in await pipeline.venues[broker].book.all() if match(o)]


async def test_ambiguous_timeout_at_schwab_is_resolved_by_listing(
    pipeline: Pipeline, nc: NatsClient, db: AsyncEngine
) -> None:
    """Schwab accepts the order but the reply is lost and its list lags: the executor keeps
    looking (never resubmits) and reports the one order once it shows up."""
    schwab = pipeline.venues[BrokerName.SCHWAB]
    schwab.faults.timeouts_after_accept = 1
    schwab.faults.hidden_lookups = 2
    payload = intent_payload(**{**OPTION, "quantity": "7", "symbol": "MSFT  270115C00300000"})
    await publish_json(nc, payload)
    [order] = await final_order(db, payload["intent_id"])
    assert (order["broker_name"], order["status"]) == ("schwab", "filled")
    placed = await orders_at(pipeline, BrokerName.SCHWAB, lambda o: o.symbol == payload["symbol"])
    assert len(placed) == 1
    assert order["broker_order_id"] == placed[0].broker_order_id


async def test_ambiguous_timeout_at_alpaca_is_resolved_by_lookup_after_the_422(
    pipeline: Pipeline, nc: NatsClient, db: AsyncEngine
) -> None:
    """The reply is lost and lookups lag, so the retry is refused as a duplicate (422); the
    lookup that follows finds the one order."""
    alpaca = pipeline.venues[BrokerName.ALPACA]
    alpaca.faults.timeouts_after_accept = 1
    alpaca.faults.hidden_lookups = 2
    payload = intent_payload()
    await publish_json(nc, payload)
    [order] = await final_order(db, payload["intent_id"])
    assert (order["broker_name"], order["status"]) == ("alpaca", "filled")
    placed = await orders_at(pipeline, BrokerName.ALPACA, lambda o: o.client_order_id == payload["intent_id"])
    assert len(placed) == 1
    assert alpaca.faults.hidden_lookups == 0  # both lagging lookups happened before the 422 path
    # While the outcome was ambiguous the order was reported `unknown`, superseded by what followed.
    reports = [
        ExecutionReport.model_validate_json(m)
        for m in await stream_messages(nc, "EXECUTIONS", "mbx.exec.alpaca.unknown.*")
    ]
    [unknown] = [r for r in reports if r.intent_id == payload["intent_id"]]
    assert (unknown.report_seq, unknown.reason_code, unknown.final) == (0, "outcome_unknown", False)


async def test_two_replicas_split_the_work_with_no_duplicates(
    start_pipeline: Any, settings: Settings, nc: NatsClient, db: AsyncEngine
) -> None:
    """Two executors of one broker share its durable consumer: both work, each order is placed once."""
    pipeline = await start_pipeline(parse_config({"brokers": {"ibkr": {}}}))
    second = build_executor_worker(settings, BrokerName.IBKR, config=pipeline.config)
    await second.start()
    pipeline.workers.append(second)
    [first] = [w for w in pipeline.workers if w.name == "executor-ibkr" and w is not second]
    payloads = [intent_payload(strategy_id="replicas") for _ in range(100)]
    for payload in payloads:
        await publish_json(nc, payload, strategy="replicas")
    ids = [p["intent_id"] for p in payloads]

    async def all_filled() -> bool:
        rows = await fetch_all(db, "SELECT status FROM orders WHERE intent_id = ANY(:ids)", ids=ids)
        return len(rows) == len(ids) and {r["status"] for r in rows} == {"filled"}

    await eventually(all_filled, timeout=30)
    book = [o.client_order_id for o in await pipeline.venues[BrokerName.IBKR].book.all() if o.client_order_id in ids]
    assert sorted(book) == sorted(ids)
    assert first.handlers.stats.latency_ms > 0 and second.handlers.stats.latency_ms > 0  # both placed orders


async def test_a_replayed_route_at_schwab_places_nothing_twice(
    pipeline: Pipeline, nc: NatsClient, db: AsyncEngine
) -> None:
    """Schwab has no client order id, so only looking first stops a replay (fresh message id,
    first delivery) from placing the same order again."""
    payload = intent_payload(**{**OPTION, "quantity": "13", "symbol": "MSFT  270115C00310000"})
    await publish_json(nc, payload)
    [order] = await final_order(db, payload["intent_id"])
    assert order["broker_name"] == "schwab"
    [route] = [
        m
        for m in await stream_messages(nc, "ROUTES", "mbx.routes.schwab.*")
        if json.loads(m)["intent_id"] == payload["intent_id"]
    ]
    await nc.jetstream().publish(
        "mbx.routes.schwab",
        route.encode(),
        headers={
            "Nats-Msg-Id": f"replay-{payload['intent_id']}",
            REPLAY_HEADER: "dlq-test",
            "Mbx-Intent-Id": payload["intent_id"],
        },
    )
    spec = Topology(Subjects()).executor_consumer(BrokerName.SCHWAB)

    async def handled() -> bool:
        info = await nc.jetstream().consumer_info(spec.stream, spec.durable)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(handled, timeout=15)
    placed = await orders_at(pipeline, BrokerName.SCHWAB, lambda o: o.symbol == payload["symbol"])
    assert len(placed) == 1


async def test_a_broker_that_does_not_answer_makes_the_order_unknown_and_it_is_looked_up_not_resent(
    start_pipeline: Any, nc: NatsClient, db: AsyncEngine
) -> None:
    """A placement with no answer within request_timeout_s is reported unknown (the handler does
    not hang), looked up on the next delivery, and placed once the broker answers again."""
    config = parse_config({"brokers": {"alpaca": {"request_timeout_s": 0.5}}})
    pipeline = await start_pipeline(config)
    alpaca = pipeline.venues[BrokerName.ALPACA]
    alpaca.faults.latency_ms = 30_000
    payload = intent_payload(strategy_id="slowbroker")
    sub = await nc.subscribe(Subjects().execution(BrokerName.ALPACA, "unknown", "slowbroker"))
    try:
        await publish_json(nc, payload, strategy="slowbroker")
        while True:
            unknown = json.loads((await sub.next_msg(timeout=10)).data)
            if unknown["intent_id"] == payload["intent_id"]:
                break
    finally:
        await sub.unsubscribe()
    assert "did not answer within 0.5s (placing the order)" in unknown["reason"]
    alpaca.faults.latency_ms = 0
    [order] = await final_order(db, payload["intent_id"])
    assert order["status"] == "filled"
    assert [o for o in await alpaca.book.all() if o.client_order_id == payload["intent_id"]] != []
    assert alpaca.place_requests[payload["intent_id"]] == 2  # the timed-out one, then the one after a lookup


async def test_a_queue_of_identical_schwab_orders_waits_without_using_up_deliveries(
    start_pipeline: Any, isolated: Settings, nc: NatsClient
) -> None:
    """More identical Schwab orders than an executor holds at once (32) queue behind a shape
    lock whose holder's delivery died: the waiters are set aside, so the holder's redelivery is
    still fetched, and each route is delivered once (none is retried, none dead-lettered)."""
    await start_pipeline(parse_config({"brokers": {"schwab": {}}}), own_settings=isolated)
    symbol = "KO    270115C00070000"
    payloads = [intent_payload(**{**OPTION, "symbol": symbol, "quantity": "1"}, strategy_id="queue") for _ in range(40)]
    holder = payloads[-1]  # its lock is taken as if an earlier delivery of it had died holding it
    topology = isolated.topology
    guard = SameShapeGuard(
        nc.jetstream, topology.shape_locks_bucket, topology.attributions_bucket, str(BrokerName.SCHWAB)
    )
    await guard.acquire(make_intent(**holder))
    for payload in payloads:
        await nc.jetstream().publish(
            isolated.subjects.intent("queue"),
            json.dumps(payload).encode(),
            headers={"Nats-Msg-Id": payload["intent_id"]},
        )
    ids = [p["intent_id"] for p in payloads]

    engine = make_engine(isolated.database_url or "", pool_size=1)

    async def all_filled() -> bool:
        rows = await fetch_all(engine, "SELECT status FROM orders WHERE intent_id = ANY(:ids)", ids=ids)
        return len(rows) == len(ids) and {r["status"] for r in rows} == {"filled"}

    try:
        await eventually(all_filled, timeout=60)
    finally:
        await engine.dispose()
    spec = topology.executor_consumer(BrokerName.SCHWAB)
    info = await nc.jetstream().consumer_info(spec.stream, spec.durable)
    assert info.delivered.consumer_seq == len(payloads)  # no route needed a second delivery


async def test_identical_orders_waiting_in_one_process_poll_the_shared_lock_one_at_a_time(
    isolated: Settings, nc: NatsClient
) -> None:
    """Forty identical orders waiting for a holder cost one poller of the shared lock, not forty
    (a hundred pollers once starved the holder of the CPU it needed to finish); the holder's own
    redelivery passes the queue at once; the waiters then take the lock in turn, each once."""
    topology = isolated.topology
    guard = SameShapeGuard(
        nc.jetstream, topology.shape_locks_bucket, topology.attributions_bucket, str(BrokerName.SCHWAB)
    )
    holder, *waiters = [make_intent(**{**OPTION, "quantity": "1"}, strategy_id="queue") for _ in range(41)]
    await guard.acquire(holder)
    looks = 0
    look = guard._holder

    async def counted(kv: Any, key: str) -> str | None:
        nonlocal looks
        looks += 1
        return await look(kv, key)

    guard._holder = counted  # type: ignore[method-assign]
    turns: list[str] = []

    async def take_turn(intent: Any) -> None:
        await guard.acquire(intent)
        turns.append(intent.intent_id)
        await guard.release(intent)

    queue = [asyncio.create_task(take_turn(w)) for w in waiters]

    async def all_queued() -> bool:
        return looks >= len(waiters)  # each has looked once and queued

    await eventually(all_queued)
    looks = 0
    await asyncio.sleep(1.0)
    assert looks <= 25, f"{looks} looks at the lock in a second: more than one poller"
    await asyncio.wait_for(guard.acquire(holder), 1.0)  # its redelivery does not queue
    assert turns == []
    await guard.release(holder)
    await asyncio.wait_for(asyncio.gather(*queue), 60)
    assert sorted(turns) == sorted(w.intent_id for w in waiters)
