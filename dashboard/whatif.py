"""The configuration tab's "preview this change on last week's orders": an edit of the live
config replayed over the week's recorded decisions by `mbx whatif` (through
``Backend.whatif``, see ``workers.ops.whatif`` for why a command), shown as the command's
summary, and nothing applied."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import streamlit as st

from dashboard.backend import Backend
from dashboard.widgets import frame
from workers.domain.config import MbxConfig
from workers.ops.errors import OperatorError
from workers.ops.whatif import ROWS_KEPT, WhatIfReport

PREVIEW_SINCE = "7d"
PREVIEW_KEY = "whatif_preview"
"""Session state: the changes last previewed and their report, shown again while the form holds them."""


def preview_change(backend: Backend, config: MbxConfig, changes: dict[str, Any]) -> None:
    """The edit replayed over the last week's recorded decisions by `mbx whatif`; nothing applied."""
    with st.spinner("replaying last week's orders under the edited config"):
        try:
            report = backend.whatif(config, changes, since=PREVIEW_SINCE)
        except OperatorError as exc:
            st.error(f"no preview: {exc}")
            return
        except TimeoutError:
            st.error("no preview: the what-if did not answer in time")
            return
    st.session_state[PREVIEW_KEY] = (changes, report)
    show_whatif(report)


def show_whatif(report: WhatIfReport) -> None:
    """The summary `mbx whatif` prints, from its JSON report."""
    st.markdown(
        f"**Preview, not applied**: {report.replayed} orders of the last 7 days routed again under the edited "
        f"config; press Apply to apply it"
    )
    cells = st.columns(5)
    cells[0].metric("decisions that change", report.changed)
    cells[1].metric("would be rejected", report.rejected)
    fees_change = report.fees_after - report.fees_before
    cells[2].metric(
        "estimated fees (USD)",
        f"{report.fees_after:.4f}",
        delta=f"{fees_change:+.4f}" if fees_change else None,
        delta_color="inverse",
    )
    cells[3].metric(
        "mean expected latency (ms)",
        _ms(report.latency_after_ms),
        delta=_ms_delta(report.latency_before_ms, report.latency_after_ms),
        delta_color="inverse",
    )
    cells[4].metric(
        "held for approval",
        report.held,
        delta=(report.held - report.held_before) or None,
        delta_color="off",
        help="Orders an approval rule would hold before routing; the change is against those held when recorded.",
    )
    unrouted = report.rejected_unrouted
    st.caption(
        f"before: fees {report.fees_before:.4f} USD, latency {_ms(report.latency_before_ms)} ms "
        "(over the orders routed in both)"
        + (f"; {unrouted} orders were rejected with no decision: not replayed" if unrouted else "")
    )
    mix_cell, rule_cell = st.columns(2)
    mix_cell.markdown("**Broker mix**")
    mix_cell.dataframe(
        frame([asdict(m) for m in report.mix], ["broker", "before", "after"]), hide_index=True, key="whatif_mix"
    )
    rule_cell.markdown("**Per-rule effect** (decisions per rule that moves)")
    rule_cell.dataframe(
        frame([asdict(e) for e in report.rule_effect], ["rule", "before", "after"]), hide_index=True, key="whatif_rules"
    )
    st.markdown(f"**Decisions that change** ({report.changed})")
    st.dataframe(
        frame(
            ({**row, "before": _decision(row, "old"), "after": _decision(row, "new")} for row in report.changed_rows),
            ["intent_id", "strategy_id", "symbol", "before", "after", "new_reason"],
        ),
        hide_index=True,
        key="whatif_changed",
    )
    _first_of(report.changed, "changed decisions")
    if report.rejected:
        st.markdown(f"**Would be rejected** ({report.rejected})")
        st.dataframe(
            frame(report.rejected_rows, ["intent_id", "strategy_id", "symbol", "new_rule", "new_reason"]),
            hide_index=True,
            key="whatif_rejected",
        )
        _first_of(report.rejected, "would-be rejections")
    if report.held or report.held_before:
        st.markdown(
            f"**Would be held for approval** ({report.held}; {report.held_before} were held when recorded), "
            "each routed as shown once approved"
        )
        st.dataframe(
            frame([asdict(e) for e in report.hold_effect], ["rule", "before", "after"]).rename(
                columns={"rule": "approval rule", "before": "held when recorded", "after": "would hold"}
            ),
            hide_index=True,
            key="whatif_hold_rules",
        )
        st.dataframe(
            frame(report.held_rows, ["intent_id", "strategy_id", "symbol", "new_hold", "old_hold"]),
            hide_index=True,
            key="whatif_held",
        )
        _first_of(report.held, "would-be holds")
    with st.expander("what the replay assumes"):
        for assumption in report.assumptions:
            st.markdown(f"- {assumption}")


def _first_of(count: int, what: str) -> None:
    if count > ROWS_KEPT:
        st.caption(f"the first {ROWS_KEPT} of {count} {what}: `mbx whatif --csv` writes them all")


def _decision(row: dict[str, Any], side: str) -> str:
    broker = row[f"{side}_broker"]
    return f"{broker} ({row[f'{side}_rule']})" if broker is not None else str(row[f"{side}_rule"])


def _ms(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "n/a"


def _ms_delta(before: float | None, after: float | None) -> str | None:
    """The change shown under the latency, none when it is not known or rounds to nothing."""
    if before is None or after is None or round(after - before, 1) == 0:
        return None
    return f"{after - before:+.1f}"
