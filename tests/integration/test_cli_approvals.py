"""`mbx submit` of a held order, `mbx approvals`, `mbx approve`, `mbx deny` and `mbx explain` of
a hold, driven as an operator would against the whole stack (router, executors, aggregator)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.builders import new_intent_id
from tests.conftest import eventually, fetch_all
from tests.integration.test_cli import mbx, start_tail
from tests.servers import Servers
from workers.domain.config import MbxConfig, parse_config
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration

DESK = "desk"
FOUR_EYES = "foureyes"
CONFIG: MbxConfig = parse_config(
    {
        "approvals": {
            "rules": [
                {"name": "four-eyes", "match": {"strategy": [FOUR_EYES]}, "approvers": 2, "expire_after_s": 600},
                {"name": "desk-orders", "match": {"strategy": [DESK]}, "expire_after_s": 600},
            ]
        }
    }
)


@pytest.fixture
async def stack(start_pipeline: Any, isolated: Settings, servers: Servers) -> dict[str, str]:
    """A whole pipeline of its own (prefix and database) under ``CONFIG``; the CLI's environment."""
    await start_pipeline(CONFIG, own_settings=isolated)
    return {
        "MBX_NATS_URL": servers.nats_url,
        "MBX_DATABASE_URL": isolated.database_url or "",
        "MBX_SUBJECT_PREFIX": isolated.subject_prefix,
    }


async def submit_held(env: dict[str, str], strategy: str) -> str:
    intent_id = new_intent_id(strategy)
    args = ("submit", "--symbol", "AAPL", "--quantity", "5", "--strategy", strategy, "--intent-id", intent_id)
    code, out = await mbx(*args, "--timeout", "30", env=env)
    flat = " ".join(out.split())
    assert code == 0, out
    rule = "four-eyes" if strategy == FOUR_EYES else "desk-orders"
    assert f"held for approval by rule {rule}" in flat
    assert f"mbx approve {intent_id}" in flat
    assert "routed to" not in flat
    return intent_id


async def order_status(env: dict[str, str], intent_id: str) -> tuple[str, str | None] | None:
    engine = make_engine(env["MBX_DATABASE_URL"], pool_size=1)
    try:
        rows = await fetch_all(engine, "SELECT status, reason FROM orders WHERE intent_id = :i", i=intent_id)
    finally:
        await engine.dispose()
    final = [(r["status"], r["reason"]) for r in rows if r["status"] in ("filled", "rejected")]
    return final[0] if final else None


async def steps_stored(env: dict[str, str], intent_id: str, n: int) -> bool:
    engine = make_engine(env["MBX_DATABASE_URL"], pool_size=1)
    try:
        rows = await fetch_all(engine, "SELECT step FROM approvals WHERE intent_id = :i", i=intent_id)
    finally:
        await engine.dispose()
    return len(rows) >= n


async def test_a_held_order_is_listed_approved_and_filled_and_explain_tells_who_approved_it(
    stack: dict[str, str],
) -> None:
    """`mbx submit` says the order is held and how to approve it; `mbx approvals` lists it (table
    and JSON); `mbx approve --by` routes it and it fills; `mbx explain` shows the hold and the
    approval (who, note) before the route."""
    intent_id = await submit_held(stack, DESK)
    code, out = await mbx("approvals", env=stack)
    assert code == 0, out
    assert "1 held for approval" in out
    line = next(row for row in out.splitlines() if intent_id in row)
    assert all(word in line for word in (DESK, "AAPL", "buy", "5", "desk-orders", "0/1")), line
    code, out = await mbx("approvals", "--json", env=stack)
    assert code == 0, out
    listed = [json.loads(row) for row in out.splitlines()]
    assert [(h["intent_id"], h["state"], h["approved_by"], h["quantity"]) for h in listed] == [
        (intent_id, "pending", [], "5")
    ]
    assert listed[0]["estimated_notional"] is not None and 590 < listed[0]["expires_in_s"] <= 600

    code, out = await mbx("approve", intent_id, "--note", "checked with the PM", "--by", "carol", env=stack)
    assert code == 0, out
    assert f"{intent_id} approved by carol: the router routes it now" in " ".join(out.split())
    assert await eventually(lambda: order_status(stack, intent_id), timeout=30) == ("filled", None)
    code, out = await mbx("approvals", env=stack)
    assert code == 0 and "nothing is held for approval" in out, out
    code, out = await mbx("approvals", "--all", "--json", env=stack)
    assert [(h["intent_id"], h["state"], h["approved_by"]) for h in map(json.loads, out.splitlines())] == [
        (intent_id, "released", ["carol"])
    ]

    await eventually(lambda: steps_stored(stack, intent_id, 3), timeout=30)
    code, out = await mbx("explain", intent_id, env=stack)
    assert code == 0, out
    flat = " ".join(out.split())
    assert "held for approval at" in flat and "by rule desk-orders (1 approver, about" in flat
    assert "approved by carol at" in flat and "(1 of 1): checked with the PM" in flat
    assert "released to routing at" in flat
    assert flat.index("approved by carol") < flat.index("attempt 1: routed to")


async def test_two_approvers_must_be_two_operators_and_the_operator_defaults_to_mbx_operator(
    stack: dict[str, str],
) -> None:
    """The first approval leaves the order held (1 of 2); the same operator again is refused with
    one line and exit 2; another operator (MBX_OPERATOR) releases it and it fills."""
    intent_id = await submit_held(stack, FOUR_EYES)
    code, out = await mbx("approve", intent_id, env={**stack, "MBX_OPERATOR": "carol"})
    assert code == 0, out
    assert f"{intent_id}: approval 1 of 2 by carol; another operator must approve" in " ".join(out.split())
    code, out = await mbx("approvals", "--json", env=stack)
    assert [(h["intent_id"], h["approved_by"]) for h in map(json.loads, out.splitlines())] == [(intent_id, ["carol"])]
    code, out = await mbx("approve", intent_id, "--by", "carol", env=stack)
    assert code == 2, out
    assert f"error: carol has already approved {intent_id}: its second approval must come from another operator" in (
        " ".join(out.split())
    )
    assert "Traceback" not in out and len(out.strip().splitlines()) <= 2
    code, out = await mbx("approve", intent_id, env={**stack, "MBX_OPERATOR": "dave"})
    assert code == 0, out
    assert f"{intent_id} approved by dave" in out
    assert await eventually(lambda: order_status(stack, intent_id), timeout=30) == ("filled", None)


async def test_a_denied_order_ends_rejected_and_no_later_decision_is_taken(stack: dict[str, str]) -> None:
    """`mbx deny --note` ends the order rejected (approval_denied, with the note); a later
    approval is refused (exit 2, one line naming who denied it), as are an unknown intent and a
    strategy deciding on its own order; explain shows the denial, and a strategy's cancel of its
    held order."""
    intent_id = await submit_held(stack, DESK)
    code, out = await mbx("deny", intent_id, "--note", "over the desk limit", "--by", "erin", env=stack)
    assert code == 0, out
    assert f"{intent_id} denied by erin: it ends rejected" in " ".join(out.split())
    status = await eventually(lambda: order_status(stack, intent_id), timeout=30)
    assert (
        status[0] == "rejected" and "denied by erin" in (status[1] or "") and "over the desk limit" in (status[1] or "")
    )
    code, out = await mbx("approve", intent_id, "--by", "carol", env=stack)
    assert (code, "Traceback" in out) == (2, False), out
    assert f"error: {intent_id} is already denied by erin: one decision stands" in " ".join(out.split())

    code, out = await mbx("approve", "no-such-intent", "--by", "carol", env=stack)
    assert (code, "Traceback" in out) == (2, False), out
    assert "no intent no-such-intent is held for approval (mbx approvals lists them)" in " ".join(out.split())

    other = await submit_held(stack, DESK)
    code, out = await mbx("approve", other, "--by", DESK, env=stack)
    assert (code, "Traceback" in out) == (2, False), out
    assert f"strategy {DESK} cannot decide on its own order" in " ".join(out.split())

    await eventually(lambda: steps_stored(stack, intent_id, 2), timeout=30)
    code, out = await mbx("explain", intent_id, env=stack)
    assert code == 0, out
    assert "denied by erin at" in out and ": over the desk limit" in out

    # An operator's cancel without --strategy: sent as the held order's own strategy.
    code, out = await mbx("cancel", other, "--reason", "signal gone", env=stack)
    assert code == 0, out
    await eventually(lambda: steps_stored(stack, other, 2), timeout=30)
    code, out = await mbx("explain", other, env=stack)
    assert code == 0, out
    assert "cancelled by its strategy at" in " ".join(out.split())


async def test_tail_exec_tells_a_held_order_as_held(stack: dict[str, str]) -> None:
    """`mbx tail exec` shows the strategy's pending_approval message as a hold, not as a report."""
    tail = await start_tail("exec", "--strategy", DESK, "--count", "1", "--for", "30", env=stack)
    intent_id = await submit_held(stack, DESK)
    out, _ = await asyncio.wait_for(tail.communicate(), 90)
    assert tail.returncode == 0
    assert f"exec   {intent_id} router held for approval (rule desk-orders)" in out.decode()


async def test_a_csv_batch_and_a_parent_order_say_which_are_held_instead_of_waiting(
    stack: dict[str, str], tmp_path: Path
) -> None:
    """`mbx submit --csv` counts a held row as held (not as without a final report) and names it;
    `mbx submit --split` of a parent a rule holds says so at once: the parent is held whole."""
    rows = tmp_path / "orders.csv"
    held_id, routed_id = new_intent_id(DESK), new_intent_id("free")
    rows.write_text(
        f"intent_id,strategy,symbol,side,quantity\n{held_id},{DESK},AAPL,buy,2\n{routed_id},free,MSFT,buy,1\n"
    )
    code, out = await mbx("submit", "--csv", str(rows), "--timeout", "30", env=stack)
    flat = " ".join(out.split())
    assert code == 0, out
    assert "submitted 2 intents: 1 filled, 1 held for approval" in flat
    assert f"{held_id}: rule desk-orders, expires" in flat and "without a final report" not in flat

    parent = new_intent_id(DESK)
    args = ("submit", "--symbol", "AAPL", "--quantity", "20", "--strategy", DESK, "--intent-id", parent, "--split")
    code, out = await mbx(*args, "--timeout", "30", env=stack)
    flat = " ".join(out.split())
    assert code == 0, out
    assert f"submitted parent order {parent}" in flat and "held for approval by rule desk-orders" in flat
    assert f"mbx approve {parent}" in flat
