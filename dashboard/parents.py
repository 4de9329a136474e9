"""Parent orders on the routing tab: the recent parents, one parent's progress (filled against
scheduled over time) and its children, and cancelling a working parent through ``workers.ops``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard.backend import Backend
from dashboard.widgets import answer, frame, plain
from workers.ops.errors import OperatorError
from workers.readmodel.parent_progress import ProgressPoint
from workers.readmodel.parents import ChildStory

PARENT_COLUMNS = [
    "parent", "strategy", "symbol", "side", "algorithm", "status", "filled / quantity", "average price",
    "arrival price", "slippage bps", "children by broker", "created_at",
]  # fmt: skip
CHILD_COLUMNS = ["slice", "child", "broker", "status", "filled", "quantity", "average price", "reason"]


def render(backend: Backend) -> None:
    st.subheader("Parent orders", anchor=False)
    parents = answer("parent orders (database)", backend.parents) or []
    st.dataframe(parent_table(parents), hide_index=True, key="parents")
    if not parents:
        st.caption("no parent orders yet (an intent with an execution block: split, twap or iceberg)")
        return
    st.caption(f"the newest {len(parents)} parent orders; slippage is against the arrival price, + is worse")
    by_id = {p["parent_intent_id"]: p for p in parents}
    picked = st.selectbox(
        "parent",
        list(by_id),
        index=0,
        key="parent_pick",
        format_func=lambda i: f"{i} · {by_id[i]['symbol']} {by_id[i]['side']} · {by_id[i]['status']}",
    )
    if picked is not None:
        show_parent(backend, by_id[picked])


def parent_table(parents: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [
        {
            "parent": p["parent_intent_id"],
            "strategy": p["strategy_id"],
            "symbol": p["symbol"],
            "side": p["side"],
            "algorithm": p["algorithm"] or "-",
            "status": p["status"],
            "filled / quantity": f"{_n(p['filled_quantity'])} / {_n(p['quantity'])}",
            "average price": p["average_price"],
            "arrival price": p["arrival_price"],
            "slippage bps": p["slippage_bps"],
            "children by broker": p["children_by_broker"],
            "created_at": p["created_at"],
        }
        for p in parents
    ]
    return frame(rows, PARENT_COLUMNS)


def show_parent(backend: Backend, parent: dict[str, Any]) -> None:
    st.markdown(
        f"**{parent['parent_intent_id']}**: {parent['side']} {_n(parent['quantity'])} {parent['symbol']} "
        f"for `{parent['strategy_id']}`, {parent['plan']}; **{parent['status']}**, "
        f"{_n(parent['filled_quantity'])} filled" + (f"  \n{parent['reason']}" if parent.get("reason") else "")
    )
    progress = answer("the parent's progress (database)", lambda: backend.parent_progress(parent, datetime.now(UTC)))
    if progress:
        st.altair_chart(progress_chart(progress), key=f"parent_progress_{parent['parent_intent_id']}")
    story = answer("the parent's children (database)", lambda: backend.parent_story(parent["parent_intent_id"]))
    if story is not None:
        st.dataframe(
            frame(child_rows(story.children), CHILD_COLUMNS),
            hide_index=True,
            key=f"parent_children_{parent['parent_intent_id']}",
        )
    if parent["working"]:
        cancel_form(backend, parent)


def progress_frame(points: list[ProgressPoint]) -> pd.DataFrame:
    return pd.DataFrame([{"at": p.at, "quantity": float(p.quantity), "series": p.series} for p in points])


def progress_chart(points: list[ProgressPoint]) -> alt.Chart:
    chart: alt.Chart = (
        alt.Chart(progress_frame(points), title="filled vs scheduled")
        .mark_line(point=True)
        .encode(
            x=alt.X("at:T", title=None),
            y=alt.Y("quantity:Q", title="cumulative quantity"),
            color=alt.Color("series:N", title=None),
            tooltip=["series", "at", "quantity"],
        )
        .properties(height=240)
    )
    return chart


def child_rows(children: list[ChildStory]) -> list[dict[str, Any]]:
    return [
        {
            "slice": c.slice_number,
            "child": c.intent_id,
            "broker": c.broker or "-",
            "status": c.status,
            "filled": c.filled_quantity,
            "quantity": c.quantity,
            "average price": c.average_price,
            "reason": c.reason,
        }
        for c in children
    ]


def cancel_form(backend: Backend, parent: dict[str, Any]) -> None:
    parent_id = parent["parent_intent_id"]
    with st.form(f"cancel_parent_{parent_id}"):
        cells = st.columns(2)
        operator = cells[0].text_input("your name (for the audit trail)", key=f"cancel_operator_{parent_id}")
        reason = cells[1].text_input("why", key=f"cancel_reason_{parent_id}")
        asked = st.form_submit_button("Cancel parent")
    if not asked:
        return
    try:
        outcome = answer(
            "the cancel (NATS)", lambda: backend.cancel(parent_id, parent["strategy_id"], operator, reason)
        )
    except OperatorError as exc:
        st.error(f"not cancelled: {exc}")
        return
    except Exception as exc:  # noqa: BLE001  (an operator action shows what went wrong, never a traceback)
        st.error(f"not cancelled: {type(exc).__name__}: {exc}")
        return
    if outcome is None:
        return
    if outcome.outcome == "cancelled":
        st.success(outcome.message)
    elif outcome.outcome == "refused":
        st.error(outcome.message)
    else:
        st.warning(outcome.message)


def _n(value: Any) -> str:
    number = plain(value)
    return "-" if number is None else f"{number:g}"
