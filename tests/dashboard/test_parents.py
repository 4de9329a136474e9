"""Parent orders on the routing tab, on the real stack: the read model's recent parents and one
parent's progress (filled vs scheduled), the operator's cancel through ``workers.ops``, and the
page's table, chart, children and Cancel parent action (AppTest)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.conftest import eventually, fetch_all
from tests.dashboard.conftest import Flow, charts, open_app, run, table, texts
from workers.ops.cancel import cancel_order
from workers.ops.errors import OperatorError
from workers.platform.bus import jetstream
from workers.readmodel.parent_progress import parent_progress, recent_parents
from workers.venues.simulated.quotes import QuoteModel

pytestmark = pytest.mark.integration


def resting_limit(symbol: str) -> str:
    """A buy limit 2% under the simulated mid: it rests at the broker and never fills."""
    return str((QuoteModel().mid(symbol) * Decimal("0.98")).quantize(Decimal("0.01")))


def resting_twap(symbol: str) -> dict[str, object]:
    """A TWAP of resting limit buys over 10 minutes: it stays working until cancelled."""
    return {
        "symbol": symbol,
        "quantity": "20",
        "order_type": "limit",
        "limit_price": resting_limit(symbol),
        "execution": {"twap": {"duration_s": 600, "slices": 2}},
    }


async def test_recent_parents_list_a_split_parent_and_its_progress_reaches_its_schedule(flow: Flow) -> None:
    """A filled split parent is listed with its algorithm and children by broker, and its filled
    line ends at the quantity its one-step schedule called for."""
    row = await flow.submit_parent(symbol="KO", quantity="40", execution={"split": {}})

    [listed] = [p for p in await recent_parents(flow.db) if p["parent_intent_id"] == row["parent_intent_id"]]
    assert listed["algorithm"] == "split" and listed["status"] == "filled" and not listed["working"]
    assert sum(listed["children_by_broker"].values()) == len(row["children"]) >= 1
    assert "unrouted" not in listed["children_by_broker"]

    points = await parent_progress(flow.db, listed, datetime.now(UTC))
    scheduled = [p for p in points if p.series == "scheduled"]
    filled = [p for p in points if p.series == "filled"]
    assert {p.quantity for p in scheduled} == {Decimal(40)}  # split: the whole quantity at once
    assert filled[0].quantity == 0 and filled[-1].quantity == Decimal(40)
    assert [p.at for p in filled] == sorted(p.at for p in filled)
    assert scheduled[-1].at == filled[-1].at  # both lines end together


async def test_an_operator_cancels_a_working_twap_and_the_audit_trail_names_them(flow: Flow) -> None:
    """A working TWAP cancelled through ``workers.ops`` answers cancelled with what filled, its
    row ends cancelled naming the operator, and a second cancel is refused, not raised."""
    row = await flow.submit_parent(until=("working", "partially_filled"), **resting_twap("PEP"))
    parent = row["parent_intent_id"]
    points = await parent_progress(flow.db, row | {"working": True}, datetime.now(UTC))
    assert [p.quantity for p in points if p.series == "scheduled"][::2] == [Decimal(10), Decimal(20)]

    js = jetstream(flow.nc)
    subjects = flow.settings.subjects
    with pytest.raises(OperatorError, match="say who"):
        await cancel_order(flow.nc, js, subjects, parent, "dash", operator=" ")
    done = await cancel_order(flow.nc, js, subjects, parent, "dash", operator="dave", reason="test", timeout=30)
    assert done.outcome == "cancelled", done
    assert f"cancelled parent order {parent}: 0 of 20 filled" in done.message

    async def cancelled() -> bool:
        [stored] = await fetch_all(
            flow.db, "SELECT status, reason FROM parent_orders WHERE parent_intent_id = :p", p=parent
        )
        return bool(stored["status"] == "cancelled" and "by dave" in (stored["reason"] or ""))

    await eventually(cancelled, timeout=20, interval=0.2)
    again = await cancel_order(flow.nc, js, subjects, parent, "dash", operator="dave", timeout=20)
    assert again.outcome in {"refused", "queued"}, again


async def test_the_routing_tab_shows_parents_charts_progress_and_cancels_a_working_one(flow: Flow) -> None:
    """The routing tab lists the parents, charts the picked one's filled vs scheduled lines, lists
    its children, and its Cancel parent action shows the outcome; a missing name is said, not raised."""
    done = await flow.submit_parent(symbol="KO", quantity="30", execution={"split": {}})
    working = await flow.submit_parent(until=("working", "partially_filled"), **resting_twap("PEP"))

    at = await open_app()
    parents = table(at, "parent", "algorithm", "filled / quantity", "slippage bps", "children by broker")
    assert {done["parent_intent_id"], working["parent_intent_id"]} <= set(parents["parent"])
    first = parents.set_index("parent").loc[done["parent_intent_id"]]
    assert first["algorithm"] == "split" and first["filled / quantity"] == "30 / 30"

    at.selectbox(key="parent_pick").select(working["parent_intent_id"])
    at = await run(at)
    progress = next(c for c in charts(at) if c.spec.get("title") == "filled vs scheduled")
    assert {r["series"] for r in progress.rows} == {"scheduled", "filled"}
    assert max(r["quantity"] for r in progress.rows if r["series"] == "scheduled") == 20
    children = table(at, "slice", "child", "broker", "status", "filled")
    assert list(children["slice"]) == [0]

    key = working["parent_intent_id"]
    at = await run(at.button[[b.label for b in at.button].index("Cancel parent")].click())
    assert any("say who is cancelling" in e for e in texts(at, "error"))
    at.text_input(key=f"cancel_operator_{key}").input("erin")
    at.text_input(key=f"cancel_reason_{key}").input("dashboard test")
    at = await run(at.button[[b.label for b in at.button].index("Cancel parent")].click())
    assert any(f"cancelled parent order {key}" in s for s in texts(at, "success")), texts(at, "warning")
