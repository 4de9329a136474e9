"""Broker status: every broker's state, latency, error rate, rate headroom and last heartbeat,
the consumers' lag, and the aggregator; refreshed every few seconds without reloading."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import streamlit as st

from dashboard.backend import Backend
from dashboard.widgets import answer, frame
from workers.ops.status import broker_state

REFRESH_S = 3
FORMATS: dict[Any, str | Callable[[object], str] | None] = {
    "latency ms": "{:.1f}",
    "error rate": "{:.0%}",
    "rate headroom": "{:.0%}",
    "last heartbeat s": "{:.1f}",
}


def render(backend: Backend) -> None:
    @st.fragment(run_every=REFRESH_S)
    def live() -> None:
        show(backend)

    live()


def _down_rows(row: pd.Series) -> list[str]:
    colour = "" if row["state"] == "up" else "background-color: #fde0dc; color: #a50e0e; font-weight: 600"
    return [colour] * len(row)


def show(backend: Backend) -> None:
    stack = answer("stack status", backend.status)
    config = answer("live config", backend.live_config)
    if stack is None or config is None:
        return
    timeout = config.routing.heartbeat_timeout_s
    now = datetime.now(UTC)
    states = {s.broker: broker_state(s, timeout, now) for s in stack.brokers}
    rows = [
        {
            "broker": str(s.broker),
            "state": states[s.broker],
            "latency ms": round(s.latency_ms, 1),
            "error rate": s.error_rate,
            "rate headroom": s.rate_limit_headroom,
            "last heartbeat s": round((now - s.last_seen).total_seconds(), 1),
            "why down": "" if states[s.broker] == "up" else s.reason,
            "warning": s.warning,
        }
        for s in stack.brokers
    ]
    down = [r for r in rows if r["state"] != "up"]
    up, total = len(rows) - len(down), len(rows)
    first, second, third = st.columns(3)
    first.metric("brokers up", f"{up} of {total}")
    aggregator = stack.aggregator or {}
    second.metric("aggregator", aggregator.get("state", "not reported"))
    third.metric("messages pending", sum(c.pending for c in stack.consumers))
    for r in down:
        st.error(f"**{r['broker']} is {r['state']}**: {r['why down'] or 'no reason given'}", icon=":material/error:")
    for r in rows:
        if r["warning"]:
            st.warning(f"**{r['broker']}**: {r['warning']}", icon=":material/schedule:")
    if aggregator.get("error"):
        st.error(f"aggregator: {aggregator['error']}")
    if not rows:
        st.info("no broker heartbeat yet: no executor has run")
    else:
        table = frame(rows)
        st.dataframe(
            table.style.apply(_down_rows, axis=1).format(FORMATS),
            hide_index=True,
            key="brokers",
        )
    st.subheader("Consumers", anchor=False)
    st.dataframe(
        frame(
            (
                {
                    "stream": c.stream,
                    "consumer": c.consumer,
                    "pending": c.pending,
                    "unacked": c.unacked,
                    "redelivered": c.redelivered,
                }
                for c in stack.consumers
            ),
            ["stream", "consumer", "pending", "unacked", "redelivered"],
        ),
        hide_index=True,
        key="consumers",
    )
    if stack.never_started:
        st.caption("not created yet (worker never started): " + ", ".join(stack.never_started))
    st.caption(f"refreshes every {REFRESH_S} s · last {now:%H:%M:%S} UTC")
