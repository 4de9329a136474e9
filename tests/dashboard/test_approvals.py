"""The approvals tab (AppTest) on a real stack: held orders listed, approved by two operators and
denied from their forms, refusals shown, and the decisions read back from the audit trail."""

from __future__ import annotations

from typing import Any

import pytest

from contracts import ApprovalEvent
from contracts.client import MbxClient
from tests.builders import make_intent
from tests.conftest import Pipeline, eventually, fetch_all
from tests.dashboard.conftest import Flow, open_app, run, table, texts
from workers.domain.config import MbxConfig, parse_config
from workers.platform.bus import jetstream
from workers.platform.live_config import write_live_config
from workers.router.app import RouterWorker

pytestmark = pytest.mark.integration

RULES: list[dict[str, Any]] = [
    {"name": "dash-four-eyes", "match": {"strategy": ["dash"], "symbol": ["KO"]}, "approvers": 2},
    {"name": "dash-large", "match": {"strategy": ["dash"], "min_quantity": 100}},
]


async def hold_rules(flow: Flow, rules: list[dict[str, Any]]) -> None:
    """Put approval rules in the live config, as an operator would, and wait for the router to apply them."""
    config: MbxConfig = flow.pipeline.config.model_copy(
        update={"approvals": parse_config({"approvals": {"rules": rules}}).approvals}
    )
    await write_live_config(jetstream(flow.nc), flow.settings.subjects, config)
    router = router_of(flow.pipeline)

    async def applied() -> bool:
        return [r.name for r in router.state.config.approvals.rules] == [r["name"] for r in rules]

    await eventually(applied, timeout=10)


def router_of(pipeline: Pipeline) -> RouterWorker:
    return next(w for w in pipeline.workers if isinstance(w, RouterWorker))


async def submit_held(flow: Flow, **overrides: Any) -> ApprovalEvent:
    intent = make_intent(strategy_id="dash", **overrides)
    client = MbxClient(flow.nc, flow.settings.subjects)
    tracker = await client.track(intent.intent_id, intent.strategy_id)
    try:
        await client.submit(intent)
        outcome = await tracker.wait_or_held(30)
    finally:
        await tracker.close()
    assert isinstance(outcome, ApprovalEvent), outcome
    return outcome


async def final_status(flow: Flow, intent_id: str) -> tuple[str, str] | None:
    rows = await fetch_all(
        flow.db,
        "SELECT status, coalesce(reason, '') AS reason FROM orders WHERE intent_id = :i "
        "AND status IN ('filled', 'rejected')",
        i=intent_id,
    )
    return (rows[0]["status"], rows[0]["reason"]) if rows else None


async def test_held_orders_are_approved_by_two_operators_or_denied_from_the_tab(flow: Flow) -> None:
    """Two held orders in the queue; a nameless approval is refused; carol's first approval leaves
    the four-eyes order at 1/2 and her second is refused; dave's releases it and it fills; the
    other is denied with a note and ends rejected; the decisions table shows who and why."""
    await hold_rules(flow, RULES)
    four_eyes = await submit_held(flow, symbol="KO", quantity="3")
    large = await submit_held(flow, symbol="AAPL", quantity="150")
    assert (four_eyes.rule, four_eyes.approvers_needed, large.rule) == ("dash-four-eyes", 2, "dash-large")

    at = await open_app()
    assert "Approvals" in [t.label for t in at.tabs]
    queue = table(at, "intent", "rule", "approvals", "expires in").set_index("intent")
    assert list(queue.index) == [four_eyes.intent_id, large.intent_id]
    assert queue.loc[four_eyes.intent_id, "approvals"] == "0/2"
    assert queue.loc[large.intent_id, "size"] == "150" and queue.loc[large.intent_id, "rule"] == "dash-large"

    at.button(key=f"approve_{four_eyes.intent_id}").click()
    await run(at)
    assert any("say who decides" in e for e in texts(at, "error")), texts(at, "error")

    at.text_input(key=f"approval_operator_{four_eyes.intent_id}").input("carol")
    at.text_input(key=f"approval_note_{four_eyes.intent_id}").input("desk limit checked")
    at.button(key=f"approve_{four_eyes.intent_id}").click()
    await run(at)
    assert any("approval 1 of 2 by carol" in s for s in texts(at, "success")), texts(at, "success")
    assert table(at, "intent", "approvals").set_index("intent").loc[four_eyes.intent_id, "approvals"] == "1/2 (carol)"

    at.text_input(key=f"approval_operator_{four_eyes.intent_id}").input("carol")
    at.button(key=f"approve_{four_eyes.intent_id}").click()
    await run(at)
    assert any("refused: carol has already approved" in e for e in texts(at, "error")), texts(at, "error")

    at.text_input(key=f"approval_operator_{four_eyes.intent_id}").input("dave")
    at.button(key=f"approve_{four_eyes.intent_id}").click()
    await run(at)
    assert any(f"{four_eyes.intent_id} approved by dave" in s for s in texts(at, "success"))
    assert list(table(at, "intent", "approvals")["intent"]) == [large.intent_id]  # the queue drew after the click
    assert await eventually(lambda: final_status(flow, four_eyes.intent_id), timeout=30) == ("filled", "")

    at.text_input(key=f"approval_operator_{large.intent_id}").input("erin")
    at.text_input(key=f"approval_note_{large.intent_id}").input("too large for today")
    at.button(key=f"deny_{large.intent_id}").click()
    await run(at)
    assert any(f"{large.intent_id} denied by erin" in s for s in texts(at, "success"))
    status, reason = await eventually(lambda: final_status(flow, large.intent_id), timeout=30)
    assert status == "rejected" and "denied by erin" in reason and "too large for today" in reason

    async def decisions_shown() -> list[tuple[str, str, str, str]]:
        decided = table(await run(at), "at", "intent", "step", "operator", "note")
        rows = zip(decided["intent"], decided["step"], decided["operator"], decided["note"], strict=True)
        return sorted(rows) if len(decided) >= 4 else []

    assert await eventually(decisions_shown, timeout=30, interval=0.5) == sorted(
        [
            (four_eyes.intent_id, "approved", "carol", "desk limit checked"),
            (four_eyes.intent_id, "approved", "dave", ""),
            (four_eyes.intent_id, "released", "", ""),
            (large.intent_id, "denied", "erin", "too large for today"),
        ]
    )
    assert "nothing is held for approval" in " ".join(texts(at, "caption"))
