"""The approval queue on the real stack (issue 31, point 1): an intent an approval rule matches is
held by the router, told to its strategy and to operators, and routed only when approved (at the
quote of that moment), or rejected when denied or expired; one decision stands whoever is first,
a second approval must come from another operator, and a hold survives the router's restart and
the nats-server's."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import nats
import pytest

from contracts import ApprovalEvent, ApprovalStep, BrokerName, CancelReject, CancelRequest, Subjects
from tests.builders import intent_payload
from tests.conftest import eventually, fetch_all, new_database
from tests.servers import Servers
from workers.devstack.nats import EmbeddedNats
from workers.domain.approvals import Hold
from workers.domain.config import parse_config
from workers.entry import build_worker
from workers.ops import approvals
from workers.ops.errors import OperatorError
from workers.platform.bus import read_stream
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings
from workers.venues.simulated.venue import SimulatedVenue

pytestmark = pytest.mark.integration

STRATEGY = "desk"
RULES = {
    "approvals": {
        "rules": [
            {"name": "quick", "match": {"symbol": ["KO"]}, "expire_after_s": 1},
            {"name": "four-eyes", "match": {"symbol": ["TSLA"]}, "approvers": 2},
            {"name": "large", "match": {"min_notional": 5000}},
        ]
    }
}


class Desk:
    """A pipeline with approval rules on its own subjects and database, and a strategy's view."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.subjects = Subjects(settings.subject_prefix)
        self.db = make_engine(settings.database_url or "", pool_size=2)
        self.told: list[ApprovalEvent] = []

    async def start(self, start_pipeline: Any) -> Any:
        self.nc = await nats.connect(self.settings.nats_url or "")
        self.js = self.nc.jetstream()
        self.venues = {b: SimulatedVenue(b, rate_limit=(1_000_000, 1.0)) for b in BrokerName}
        pipeline = await start_pipeline(parse_config(RULES), venue_overrides=self.venues, own_settings=self.settings)

        async def told(msg: Any) -> None:
            self.told.append(ApprovalEvent.model_validate_json(msg.data))

        await self.nc.subscribe(self.subjects.pending_approval(STRATEGY), cb=told)
        return pipeline

    async def close(self) -> None:
        await self.nc.close()
        await self.db.dispose()

    async def send(self, **fields: Any) -> str:
        payload = intent_payload(strategy_id=STRATEGY, **fields)
        await self.js.publish(
            self.subjects.intent(STRATEGY), json.dumps(payload).encode(), headers={"Nats-Msg-Id": payload["intent_id"]}
        )
        return str(payload["intent_id"])

    async def held(self, intent_id: str) -> Hold:
        async def found() -> Hold | None:
            return next(
                (h for h in await approvals.held(self.js, self.subjects) if h.intent.intent_id == intent_id), None
            )

        return await eventually(found, timeout=10)

    async def settled(self, intent_id: str) -> Any:
        rows = await fetch_all(self.db, "SELECT * FROM orders WHERE intent_id = :i ORDER BY attempt, id", i=intent_id)
        return rows[-1] if rows and rows[-1]["status"] in {"filled", "rejected"} else None

    async def outcome(self, intent_id: str) -> Any:
        return await eventually(lambda: self.settled(intent_id), timeout=20)

    async def steps(self, intent_id: str) -> list[tuple[str, str]]:
        events = [
            ApprovalEvent.model_validate_json(m.data)
            for m in await read_stream(self.js, self.subjects.stream_name("APPROVALS"), self.subjects.all_approvals)
        ]
        return [(str(e.step), e.operator) for e in events if e.intent_id == intent_id]

    async def placed(self, intent_id: str) -> int:
        placed = 0
        for venue in self.venues.values():
            orders = await venue.book.all()
            placed += sum(1 for o in orders if o.client_order_id == intent_id)
        return placed


@pytest.fixture
async def desk(isolated: Settings) -> Any:
    built = Desk(isolated)
    yield built
    await built.close()


async def test_a_held_order_is_told_to_its_strategy_and_fills_once_approved(desk: Desk, start_pipeline: Any) -> None:
    await desk.start(start_pipeline)
    small = await desk.send(quantity="1")  # about 200 USD: no rule holds it
    large = await desk.send(quantity="100")  # about 20,000 USD: "large"
    assert (await desk.outcome(small))["status"] == "filled"
    hold = await desk.held(large)
    assert (hold.rule, hold.approvers, hold.state) == ("large", 1, ApprovalStep.PENDING)
    assert hold.estimated_notional is not None and hold.estimated_notional > 5000
    told = await eventually(lambda: first_told(desk, large), timeout=10)
    assert (told.step, told.rule, told.expires_at) == (ApprovalStep.PENDING, "large", hold.expires_at)
    await asyncio.sleep(0.5)
    assert await desk.settled(large) is None and await desk.placed(large) == 0  # held: nothing at any broker
    decided = await approvals.approve(desk.js, desk.subjects, large, "carol", "within the book")
    assert "approved by carol" in decided.message
    order = await desk.outcome(large)
    assert (order["status"], order["broker_name"]) == ("filled", "alpaca")
    assert await desk.placed(large) == 1
    assert await steps_when(desk, large, 3) == [
        ("pending", ""),
        ("approved", "carol"),
        ("released", ""),
    ]
    assert await approvals.held(desk.js, desk.subjects) == []


async def test_a_denied_order_ends_rejected_with_the_operators_note(desk: Desk, start_pipeline: Any) -> None:
    await desk.start(start_pipeline)
    intent_id = await desk.send(quantity="100")
    await desk.held(intent_id)
    await approvals.deny(desk.js, desk.subjects, intent_id, "dave", "not this week")
    order = await desk.outcome(intent_id)
    assert (order["status"], order["broker_name"]) == ("rejected", None)
    assert "denied by dave" in order["reason"] and "not this week" in order["reason"]
    assert await desk.placed(intent_id) == 0
    with pytest.raises(OperatorError, match="already denied by dave"):
        await approvals.approve(desk.js, desk.subjects, intent_id, "erin", "")


async def test_its_strategy_may_cancel_a_held_order_and_another_may_not(desk: Desk, start_pipeline: Any) -> None:
    await desk.start(start_pipeline)
    intent_id = await desk.send(quantity="100")
    await desk.held(intent_id)
    refused: list[Any] = []

    async def got(msg: Any) -> None:
        refused.append(msg)

    await desk.nc.subscribe(desk.subjects.cancel_reject(None, "other"), cb=got)
    for strategy in ("other", STRATEGY):
        request = CancelRequest(intent_id=intent_id, strategy_id=strategy, reason="changed my mind")
        await desk.js.publish(
            desk.subjects.cancel(strategy),
            request.model_dump_json().encode(),
            headers={"Nats-Msg-Id": request.message_id},
        )
        if strategy == "other":
            await eventually(lambda: _true(bool(refused)), timeout=10)
            assert CancelReject.model_validate_json(refused[0].data).reason_code == "not_your_order"

    async def cancelled() -> Any:
        rows = await fetch_all(desk.db, "SELECT * FROM orders WHERE intent_id = :i", i=intent_id)
        return rows[0] if rows and rows[0]["status"] == "cancelled" else None

    order = await eventually(cancelled, timeout=10)
    assert order["broker_name"] is None and "changed my mind" in order["reason"]
    assert await desk.placed(intent_id) == 0
    assert await steps_when(desk, intent_id, 2) == [("pending", ""), ("cancelled", "")]
    with pytest.raises(OperatorError, match="already cancelled"):
        await approvals.approve(desk.js, desk.subjects, intent_id, "carol", "")


async def test_an_order_nobody_decides_expires_rejected(desk: Desk, start_pipeline: Any) -> None:
    await desk.start(start_pipeline)
    intent_id = await desk.send(symbol="KO", quantity="1")  # "quick": expires after 1 s
    await desk.held(intent_id)
    order = await desk.outcome(intent_id)
    assert order["status"] == "rejected" and "not approved within the approval rule quick" in order["reason"]
    assert await desk.placed(intent_id) == 0
    with pytest.raises(OperatorError, match="already expired"):
        await approvals.approve(desk.js, desk.subjects, intent_id, "carol", "too late")


async def test_two_approvals_at_once_route_the_order_once(desk: Desk, start_pipeline: Any) -> None:
    await desk.start(start_pipeline)
    intent_id = await desk.send(quantity="100")
    await desk.held(intent_id)
    results = await asyncio.gather(
        approvals.approve(desk.js, desk.subjects, intent_id, "carol", ""),
        approvals.approve(desk.js, desk.subjects, intent_id, "dave", ""),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, OperatorError)]
    assert len(refused) == 1 and "one decision stands" in str(refused[0]), results
    assert (await desk.outcome(intent_id))["status"] == "filled"
    await asyncio.sleep(1.0)  # time for a second routing to show, were there one
    assert await desk.placed(intent_id) == 1
    rows = await fetch_all(desk.db, "SELECT * FROM orders WHERE intent_id = :i", i=intent_id)
    assert len(rows) == 1


async def test_a_second_approval_must_come_from_another_operator(desk: Desk, start_pipeline: Any) -> None:
    await desk.start(start_pipeline)
    intent_id = await desk.send(symbol="TSLA", quantity="1")  # "four-eyes": 2 approvers
    await desk.held(intent_id)
    first = await approvals.approve(desk.js, desk.subjects, intent_id, "carol", "")
    assert "approval 1 of 2" in first.message
    with pytest.raises(OperatorError, match="carol has already approved"):
        await approvals.approve(desk.js, desk.subjects, intent_id, "carol", "again")
    with pytest.raises(OperatorError, match="cannot decide on its own order"):
        await approvals.approve(desk.js, desk.subjects, intent_id, STRATEGY, "")
    await asyncio.sleep(0.5)
    assert await desk.settled(intent_id) is None and await desk.placed(intent_id) == 0
    await approvals.approve(desk.js, desk.subjects, intent_id, "dave", "")
    assert (await desk.outcome(intent_id))["status"] == "filled"
    assert await steps_when(desk, intent_id, 4) == [
        ("pending", ""),
        ("approved", "carol"),
        ("approved", "dave"),
        ("released", ""),
    ]


async def test_a_parent_order_is_held_whole_and_its_children_are_not_held_again(
    desk: Desk, start_pipeline: Any
) -> None:
    await desk.start(start_pipeline)
    parent = await desk.send(quantity="100", execution={"split": {}})
    hold = await desk.held(parent)
    assert hold.rule == "large" and hold.intent.execution is not None
    await approvals.approve(desk.js, desk.subjects, parent, "carol", "")

    async def filled() -> Any:
        rows = await fetch_all(desk.db, "SELECT * FROM parent_orders WHERE parent_intent_id = :p", p=parent)
        return rows[0] if rows and rows[0]["status"] == "filled" else None

    row = await eventually(filled, timeout=30)
    assert row["filled_quantity"] == 100 and row["children"]
    assert await approvals.held(desk.js, desk.subjects) == []  # none of its children held again


async def test_a_hold_survives_a_router_restart_and_a_nats_server_restart(
    servers: Servers, settings: Settings, start_pipeline: Any, tmp_path: Path
) -> None:
    """Held, then the router stops and the nats-server is killed and restarted on its store: the
    new router finds the hold, and the approval routes the order once."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    database = await new_database(servers, f"ap{uuid.uuid4().hex[:8]}")
    own = settings.model_copy(update={"nats_url": server.url, "database_url": database, "subject_prefix": "mbx"})
    desk = Desk(own)
    pipeline = None
    try:
        pipeline = await desk.start(start_pipeline)
        intent_id = await desk.send(quantity="100")
        await desk.held(intent_id)
        router = pipeline.workers[0]
        await router.stop()
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait(10)
        server.start()
        new_router = build_worker("router", own, pipeline.config)
        pipeline.workers[0] = new_router
        await new_router.start()
        hold = await desk.held(intent_id)  # still there, still pending
        assert hold.state is ApprovalStep.PENDING
        await approvals.approve(desk.js, desk.subjects, intent_id, "carol", "after the restarts")
        assert (await desk.outcome(intent_id))["status"] == "filled"
        await asyncio.sleep(1.0)
        assert await desk.placed(intent_id) == 1
    finally:
        if pipeline is not None:
            await pipeline.stop()  # on this server, before it goes
        await desk.close()
        server.stop()


async def first_told(desk: Desk, intent_id: str) -> ApprovalEvent | None:
    return next((e for e in desk.told if e.intent_id == intent_id), None)


async def steps_when(desk: Desk, intent_id: str, count: int) -> list[tuple[str, str]]:
    async def check() -> list[tuple[str, str]] | None:
        found = await desk.steps(intent_id)
        return found if len(found) >= count else None

    return await eventually(check, timeout=10)


async def _true(value: bool) -> bool:
    return value
