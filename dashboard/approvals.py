"""The approvals tab: the orders held for an operator's approval, each with Approve and Deny
(your name and a note go into the audit trail), and the recent decisions from the audit store.

A decision goes through ``workers.ops.approvals`` as ``mbx approve`` and ``mbx deny`` do: a
compare-and-set of the hold, so one decision stands whoever clicks first; a refused one (already
decided, expired, a second approval by the same operator) is shown with its reason. The buttons
act in their callbacks, before the page is drawn again, so the queue shown afterwards already
reflects the decision."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard.backend import Backend, Unavailable
from dashboard.widgets import answer, frame
from workers.ops.approval_queue import QueueEntry, money
from workers.ops.errors import OperatorError

QUEUE_COLUMNS = [
    "intent", "strategy", "symbol", "side", "size", "est. notional", "rule", "approvals", "held at", "expires in",
]  # fmt: skip
DECISION_COLUMNS = [
    "at", "intent", "step", "operator", "note", "approvals", "rule", "strategy", "symbol", "side", "est. notional",
]  # fmt: skip
OUTCOME = "approval_outcome"
"""Session key of the last decision's outcome: (kind, message), kind ``success`` or ``error``."""


def render(backend: Backend) -> None:
    st.subheader("Held for approval", anchor=False)
    outcome = st.session_state.get(OUTCOME)
    if outcome is not None:
        kind, message = outcome
        (st.success if kind == "success" else st.error)(message)
    entries = answer("the approval queue (NATS)", backend.approval_queue)
    if entries is not None:
        st.dataframe(frame(queue_rows(entries), QUEUE_COLUMNS), hide_index=True, key="approval_queue")
        if not entries:
            st.caption("nothing is held for approval (config `approvals.rules` holds the orders they match)")
        for entry in entries:
            decision_form(backend, entry)
    st.subheader("Recent decisions", anchor=False)
    decisions = answer("recent decisions (database)", backend.approval_decisions) or []
    st.dataframe(frame(decision_rows(decisions), DECISION_COLUMNS), hide_index=True, key="approval_decisions")
    if not decisions:
        st.caption("no held order has been decided yet")


def queue_rows(entries: list[QueueEntry]) -> list[dict[str, Any]]:
    return [
        {
            "intent": e.intent_id,
            "strategy": e.strategy_id,
            "symbol": e.symbol,
            "side": e.side,
            "size": e.size,
            "est. notional": money(e.estimated_notional) or "no quote",
            "rule": e.rule,
            "approvals": e.approvals,
            "held at": e.held_at,
            "expires in": e.expires_in,
        }
        for e in entries
    ]


def decision_rows(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "at": d["at"],
            "intent": d["intent_id"],
            "step": d["step"],
            "operator": d["operator"],
            "note": d["note"],
            "approvals": f"{d['approvals_given']}/{d['approvers_needed']}",
            "rule": d["rule"],
            "strategy": d["strategy_id"],
            "symbol": d["symbol"],
            "side": d["side"],
            "est. notional": money(d["estimated_notional"]),
        }
        for d in decisions
    ]


def decision_form(backend: Backend, entry: QueueEntry) -> None:
    intent_id = entry.intent_id
    # Cleared after each click: the next operator's decision never carries the last one's name or note.
    with st.form(f"decide_{intent_id}", clear_on_submit=True):
        st.markdown(
            f"**{intent_id}**: {entry.side} {entry.size} {entry.symbol} for `{entry.strategy_id}`, "
            f"rule `{entry.rule}`, approvals {entry.approvals}, expires in {entry.expires_in}"
        )
        cells = st.columns(2)
        cells[0].text_input("your name (for the audit trail)", key=f"approval_operator_{intent_id}")
        cells[1].text_input("note", key=f"approval_note_{intent_id}")
        buttons = st.columns(2)
        buttons[0].form_submit_button(
            "Approve", key=f"approve_{intent_id}", type="primary", on_click=decide, args=(backend, "approve", intent_id)
        )
        buttons[1].form_submit_button(
            "Deny", key=f"deny_{intent_id}", on_click=decide, args=(backend, "deny", intent_id)
        )


def decide(backend: Backend, verb: str, intent_id: str) -> None:
    """A button's callback: approve or deny as the name in the form, and keep what came of it."""
    operator = str(st.session_state.get(f"approval_operator_{intent_id}", ""))
    note = str(st.session_state.get(f"approval_note_{intent_id}", ""))
    action = backend.approve if verb == "approve" else backend.deny
    try:
        st.session_state[OUTCOME] = ("success", action(intent_id, operator, note).message)
    except OperatorError as exc:
        st.session_state[OUTCOME] = ("error", f"refused: {exc}")
    except Unavailable as exc:
        st.session_state[OUTCOME] = ("error", f"not decided: {exc}")
    except TimeoutError:
        st.session_state[OUTCOME] = ("error", f"not decided: no answer about {intent_id} within the time allowed")
