"""Execution: the monthly best-execution report (what `mbx report execution` prints) for a month
picked on the page: fill rate, time to acknowledgement and to fill, and routing shares per broker
as charts, the report's tables, and the report as an HTML page to download.

The report reads every order of its month (seconds at several hundred thousand), so it runs on a
connection of its own rather than one of the few the backend's pool lends every tab, and a
month's report is kept for a minute: any click on the page runs every tab again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st
from sqlalchemy.exc import DBAPIError

from dashboard.backend import Backend, Unavailable
from dashboard.widgets import answer
from workers.platform.db.engine import make_engine
from workers.readmodel.execution_format import page, tables
from workers.readmodel.execution_report import (
    ExecutionReport,
    ExecutionRow,
    Percentiles,
    execution_report,
    routing_by_broker,
)

MONTHS_SHOWN = 24
REPORT_TTL_S = 60
"""How long a month's report is shown before it is read again."""
REPORT_TIMEOUT_S = 60.0
TIMINGS = (("ack_ms", "acknowledgement"), ("first_fill_ms", "first fill"), ("complete_fill_ms", "complete fill"))
TABLE_KEYS = ("execution_quality", "execution_routing", "execution_routing_rules")


def months(now: datetime, count: int = MONTHS_SHOWN) -> list[str]:
    """``count`` months as YYYY-MM, the month of ``now`` first."""
    index = now.year * 12 + now.month - 1
    return [f"{(index - k) // 12:04d}-{(index - k) % 12 + 1:02d}" for k in range(count)]


@st.cache_data(ttl=REPORT_TTL_S, max_entries=MONTHS_SHOWN, show_spinner="reading the month's orders")
def month_report(database_url: str, month: str) -> ExecutionReport:
    """The month's report from the database at ``database_url`` (a SQLAlchemy URL); raises
    :class:`Unavailable` when the database does not answer, ``TimeoutError`` after
    ``REPORT_TIMEOUT_S``."""
    return asyncio.run(asyncio.wait_for(_read(database_url, month), REPORT_TIMEOUT_S))


async def _read(database_url: str, month: str) -> ExecutionReport:
    engine = make_engine(database_url, pool_size=1)
    try:
        return await execution_report(engine, month)
    except (OSError, DBAPIError) as exc:
        raise Unavailable(f"the database does not answer ({str(exc).splitlines()[0]})") from None
    finally:
        await engine.dispose()


def render(backend: Backend) -> None:
    st.subheader("Best execution", anchor=False)
    month = st.selectbox("month (UTC)", months(datetime.now(UTC)), index=0, key="execution_month")
    report = answer("the execution report (database)", lambda: month_report(backend.settings.sqlalchemy_url(), month))
    if report is None:
        return
    if report.empty:
        st.info(f"no orders or route decisions are recorded for {month}")
        return
    brokers = broker_rows(report)
    total = next((r for r in report.rows if r.broker is None), None)
    if total is not None:  # None: route decisions whose orders are not stored yet
        cells = st.columns(4)
        cells[0].metric("orders", f"{total.orders:,}")
        cells[1].metric("notional USD", f"{total.notional:,.2f}")
        cells[2].metric("fill rate", "-" if total.fill_rate is None else f"{total.fill_rate * 100:.1f}%")
        cells[3].metric("fees USD", f"{total.fees:,.2f}")
    left, right = st.columns(2)
    with left:
        st.altair_chart(fill_rate_chart(brokers), key="execution_fill_rate")
    with right:
        st.altair_chart(routing_chart(report), key="execution_routing_share")
    st.altair_chart(timing_chart(brokers), key="execution_timing")
    for (title, header, rows), key in zip(tables(report), TABLE_KEYS, strict=True):
        st.markdown(f"**{title}**")
        st.dataframe(pd.DataFrame(rows, columns=list(header)), hide_index=True, key=key)
    st.caption("docs/operations.md, 'The best-execution report', defines every figure")
    st.download_button(
        "Download the HTML report",
        data=page(report),
        file_name=f"best-execution-{month}.html",
        mime="text/html",
        key="execution_download",
    )


def broker_rows(report: ExecutionReport) -> list[ExecutionRow]:
    """Each broker's total line (the router's rejections included as ``router``)."""
    return [r for r in report.rows if r.broker is not None and r.order_type is None]


def fill_rate_frame(brokers: list[ExecutionRow]) -> pd.DataFrame:
    rows = [
        {"broker": r.broker, "fill rate": float(r.fill_rate or 0), "orders": r.orders, "filled": r.filled}
        for r in brokers
    ]
    return pd.DataFrame(rows, columns=["broker", "fill rate", "orders", "filled"])


def fill_rate_chart(brokers: list[ExecutionRow]) -> alt.Chart:
    chart: alt.Chart = (
        alt.Chart(fill_rate_frame(brokers), title="fill rate by broker")
        .mark_bar()
        .encode(
            x=alt.X("broker:N", title=None),
            y=alt.Y("fill rate:Q", title=None, axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
            tooltip=["broker", alt.Tooltip("fill rate:Q", format=".1%"), "orders", "filled"],
        )
        .properties(height=240)
    )
    return chart


def timing_frame(brokers: list[ExecutionRow]) -> pd.DataFrame:
    """p50/p90/p99 in milliseconds per broker and measure; a broker without that timing is left
    out of its measure (nothing was acknowledged or filled)."""
    rows: list[dict[str, Any]] = []
    for r in brokers:
        for field, measure in TIMINGS:
            values: Percentiles = getattr(r, field)
            if values is not None:
                rows.append(
                    {"broker": r.broker, "measure": measure, "p50": values[0], "p90": values[1], "p99": values[2]}
                )
    return pd.DataFrame(rows, columns=["broker", "measure", "p50", "p90", "p99"])


def timing_chart(brokers: list[ExecutionRow]) -> alt.Chart:
    chart: alt.Chart = (
        alt.Chart(timing_frame(brokers), title="time from decision by broker, p50 (ms)")
        .mark_bar()
        .encode(
            x=alt.X("broker:N", title=None),
            xOffset=alt.XOffset("measure:N", sort=[m for _, m in TIMINGS]),
            y=alt.Y("p50:Q", title="ms"),
            color=alt.Color("measure:N", title=None, sort=[m for _, m in TIMINGS]),
            tooltip=["broker", "measure", "p50", "p90", "p99"],
        )
        .properties(height=260)
    )
    return chart


def routing_frame(report: ExecutionReport) -> pd.DataFrame:
    """Per broker, routes directed by the strategy and chosen by mbx, with their share of all."""
    rows: list[dict[str, Any]] = []
    total = sum(r.routes for r in report.routing)
    for broker, routes, _, directed, chosen in routing_by_broker(report):
        for who, count in (("directed by strategy", directed), ("chosen by mbx", chosen)):
            rows.append(
                {"broker": broker, "routed": who, "routes": count, "share": count / total, "broker routes": routes}
            )
    return pd.DataFrame(rows, columns=["broker", "routed", "routes", "share", "broker routes"])


def routing_chart(report: ExecutionReport) -> alt.Chart:
    chart: alt.Chart = (
        alt.Chart(routing_frame(report), title="routing share by broker")
        .mark_bar()
        .encode(
            x=alt.X("broker:N", title=None),
            y=alt.Y("share:Q", title=None, axis=alt.Axis(format="%"), stack="zero"),
            color=alt.Color("routed:N", title=None),
            tooltip=["broker", "routed", "routes", alt.Tooltip("share:Q", format=".1%")],
        )
        .properties(height=240)
    )
    return chart
