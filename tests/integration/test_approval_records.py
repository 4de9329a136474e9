"""The approvals audit table: the aggregator stores each step of a hold once, whatever copies,
duplicates and redeliveries of its ApprovalEvents arrive."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from contracts.subjects import MSG_ID_HEADER
from tests.builders import make_intent, new_intent_id
from tests.conftest import eventually, fetch_all
from tests.integration.test_aggregator import consumer_done
from workers.aggregator.app import build_aggregator
from workers.domain.approvals import Hold
from workers.domain.config import ApprovalRule, MbxConfig
from workers.entry import build_worker
from workers.platform.bus import ensure_streams, publish, read_stream, send
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration

STRATEGY = "desk"


def four_eyes_hold(intent_id: str) -> Hold:
    """A two-approver hold approved by carol and dave, then released to routing."""
    now = datetime(2026, 12, 8, 2, 0, tzinfo=UTC)
    rule = ApprovalRule(name="large", approvers=2, expire_after_s=600)
    intent = make_intent(intent_id=intent_id, strategy_id=STRATEGY, quantity="300")
    hold = Hold.new(intent, rule, now, Decimal("60000.50"))
    hold = hold.approve("carol", "size checked", now + timedelta(seconds=5))
    hold = hold.approve("dave", "", now + timedelta(seconds=9))
    return hold.release(now + timedelta(seconds=10))


async def test_each_step_is_stored_once_under_copies_duplicates_and_a_replay(
    isolated: Settings, nc: NatsClient
) -> None:
    """The pending step on both subjects (operators' and the strategy's), every step sent twice
    (once past JetStream's dedup under another Nats-Msg-Id), then both streams replayed from the
    start through new consumers: one row per step, as the router published it, and nothing
    dead-lettered."""
    js = nc.jetstream()
    subjects = isolated.subjects
    await ensure_streams(js, subjects)
    intent_id = new_intent_id("held")
    hold = four_eyes_hold(intent_id)
    events = [hold.event(k) for k in range(len(hold.steps))]
    for event in events:
        await publish(js, subjects.approval(event.step), event, intent_id=intent_id, strategy_id=STRATEGY)
        # A second router (or a restart) publishing the same step after the dedup window.
        again = {MSG_ID_HEADER: f"{event.message_id}-again"}
        await send(js, subjects.approval(event.step), event.model_dump_json().encode(), again)
    strategy_copy = events[0].model_copy(update={"message_id": f"{events[0].message_id}-strategy"})
    for _ in range(2):
        await publish(js, subjects.pending_approval(STRATEGY), strategy_copy, intent_id=intent_id)

    engine = make_engine(isolated.sqlalchemy_url(), pool_size=2)
    aggregator = build_aggregator(isolated, engine)
    await aggregator.start()
    try:
        specs = [s for s in isolated.topology.aggregator_consumers() if s.durable != "aggregator-positions"]
        for spec in specs:
            await eventually(lambda spec=spec: consumer_done(nc, spec.stream, spec.durable), timeout=30)  # type: ignore[misc]
    finally:
        await aggregator.stop()
    first = await approval_rows(engine, intent_id)
    assert [(r["step_no"], r["step"], r["operator"], r["note"], r["approvals_given"]) for r in first] == [
        (0, "pending", "", "", 0),
        (1, "approved", "carol", "size checked", 1),
        (2, "approved", "dave", "", 2),
        (3, "released", "", "", 2),
    ]
    assert {(r["strategy_id"], r["rule"], r["approvers_needed"], r["symbol"], r["side"]) for r in first} == {
        (STRATEGY, "large", 2, "AAPL", "buy")
    }
    assert {(r["quantity"], r["notional"], r["estimated_notional"], r["expires_at"]) for r in first} == {
        (Decimal(300), None, Decimal("60000.50"), hold.expires_at)
    }
    assert [r["at"] for r in first] == [s.at for s in hold.steps]
    assert not await read_stream(js, subjects.stream_name("DLQ"), f"{subjects.prefix}.dlq.>")

    replay = [dataclasses.replace(spec, durable=f"{spec.durable}-replay") for spec in specs]
    second = build_aggregator(isolated, engine, consumers=replay)
    await second.start()
    try:
        for spec in replay:
            await eventually(lambda spec=spec: consumer_done(nc, spec.stream, spec.durable), timeout=30)  # type: ignore[misc]
        approvals = next(s for s in replay if s.durable == "aggregator-approvals-replay")
        info = await js.consumer_info(approvals.stream, approvals.durable)
        assert info.delivered.consumer_seq == 2 * len(events)  # every copy went through again
    finally:
        await second.stop()
    assert await approval_rows(engine, intent_id) == first
    await engine.dispose()


async def test_a_held_childs_pending_step_is_not_dead_lettered_by_the_parent_order_worker(
    isolated: Settings, nc: NatsClient
) -> None:
    """A parent's child can be held (a rule added while its parent works): the parent-order worker,
    which follows its children's reports on exec.>, passes over the child's pending step instead of
    dead-lettering it as a malformed execution report."""
    js = nc.jetstream()
    subjects = isolated.subjects
    await ensure_streams(js, subjects)
    child = f"{new_intent_id('twap')}:2.0"
    pending = four_eyes_hold(child).event(0)
    strategy_copy = pending.model_copy(update={"message_id": f"{pending.message_id}-strategy"})
    parents = build_worker("parents", isolated, MbxConfig())
    await parents.start()
    try:
        await publish(js, subjects.pending_approval(STRATEGY), strategy_copy, intent_id=child, strategy_id=STRATEGY)
        spec = isolated.topology.parents_progress_consumer()
        await eventually(lambda: consumer_done(nc, spec.stream, spec.durable), timeout=30)
    finally:
        await parents.stop()
    assert not await read_stream(js, subjects.stream_name("DLQ"), f"{subjects.prefix}.dlq.>")


async def approval_rows(engine: Any, intent_id: str) -> list[dict[str, Any]]:
    rows = await fetch_all(engine, "SELECT * FROM approvals WHERE intent_id = :i ORDER BY step_no", i=intent_id)
    return [{k: v for k, v in r.items() if k not in ("id", "created_at")} for r in rows]
