"""Routing: recent route decisions with filters, each candidate's scores and why the others
lost, one intent's whole story (what `mbx explain` shows), failovers, execution quality per
broker over time, and a route preview."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st
from pydantic import ValidationError

from contracts import AssetClass, BrokerName, OrderIntent, OrderType, Side
from dashboard import parents
from dashboard.backend import Backend
from dashboard.widgets import answer, frame
from workers.readmodel.explain import by_attempt, order_outcome, router_rejections
from workers.readmodel.routing import RouteFilter, candidate_rows
from workers.readmodel.routing import since_hours as since

WINDOWS = {"last hour": 1.0, "last 6 hours": 6.0, "last day": 24.0, "last week": 168.0}
BUCKETS = {1.0: timedelta(minutes=5), 6.0: timedelta(minutes=15), 24.0: timedelta(hours=1), 168.0: timedelta(hours=6)}
QUALITY = (
    ("fill_rate", "fill rate"),
    ("slippage_bps", "slippage (bps, + is worse)"),
    ("latency_p50_ms", "latency p50 (ms)"),
    ("latency_p99_ms", "latency p99 (ms)"),
    ("fees", "fees (USD)"),
)
CANDIDATE_COLUMNS = ["broker", "total", "cost", "speed", "fill", "est. fee", "latency ms", "outcome"]
FAILOVER_COLUMNS = ["occurred_at", "intent_id", "strategy_id", "failed_broker", "attempt", "reason_code", "reason"]
FILL_COLUMNS = ["executed_at", "fill_id", "broker_name", "side", "quantity", "symbol", "price", "fee"]
ROUTE_COLUMNS = [
    "decided_at", "intent_id", "strategy_id", "symbol", "side", "size", "broker_name", "rule", "score",
    "estimated_fee", "status", "attempt", "failover_from",
]  # fmt: skip


def render(backend: Backend) -> None:
    st.subheader("Route decisions", anchor=False)
    cells = st.columns(5)
    window = cells[0].selectbox("window", list(WINDOWS), index=2, key="route_window")
    strategy = cells[1].text_input("strategy", key="route_strategy").strip() or None
    broker = cells[2].selectbox("broker", ["any", *map(str, BrokerName)], key="route_broker")
    symbol = cells[3].text_input("symbol", key="route_symbol").strip() or None
    rule = cells[4].text_input("rule", key="route_rule", placeholder="e.g. score, default:crypto").strip() or None
    hours = WINDOWS[window]
    where = RouteFilter(since(hours), None, strategy, None if broker == "any" else broker, symbol, rule)
    routes = answer("route decisions (database)", lambda: backend.routes(where)) or []
    st.dataframe(route_table(routes), hide_index=True, key="routes")
    st.caption(f"the newest {len(routes)} decisions in the {window} matching the filters")

    st.subheader("One intent", anchor=False)
    picked = st.selectbox(
        "intent", [r["intent_id"] for r in routes], index=None, key="route_intent", placeholder="pick a route above"
    )
    typed = st.text_input("or any intent id", key="story_intent").strip()
    intent_id = typed or picked
    if intent_id:
        show_story(backend, intent_id)

    st.subheader("Failovers", anchor=False)
    failovers = answer("failovers (database)", lambda: backend.failovers(since(hours))) or []
    st.dataframe(
        frame(failovers, FAILOVER_COLUMNS),
        hide_index=True,
        key="failovers",
    )

    st.subheader("Execution quality", anchor=False)
    quality = answer(
        "execution quality (database)",
        lambda: backend.quality([str(b) for b in BrokerName], since(hours), BUCKETS[hours]),
    )
    if quality is not None:
        show_quality(quality)

    parents.render(backend)

    st.subheader("Route preview", anchor=False)
    preview_form(backend)


def route_table(routes: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [r | {"size": r["quantity"] if r["quantity"] is not None else r["notional"]} for r in routes]
    return frame(rows, ROUTE_COLUMNS)


def show_story(backend: Backend, intent_id: str) -> None:
    story = answer("the intent's story (database)", lambda: backend.story(intent_id))
    if story is None:
        return
    if not any(story.values()):
        st.info(f"nothing is recorded for intent {intent_id!r} (never submitted, or not persisted yet)")
        return
    for route, order, failover in by_attempt(story):
        after = f" after {route['failover_from']} failed" if route["failover_from"] else ""
        st.markdown(
            f"**attempt {route['attempt']}**: routed to **{route['broker_name']}** by `{route['rule']}`{after}  \n"
            f"why: {route['decision'].get('reason', '')}"
        )
        st.dataframe(
            frame(candidate_rows(route), CANDIDATE_COLUMNS),
            hide_index=True,
            key=f"candidates_{intent_id}_{route['attempt']}",
        )
        if order:
            status, detail = order_outcome(order)
            st.markdown(f"order at {route['broker_name']}: **{status}**{detail}")
        if failover:
            st.markdown(f":red[failed over]: {failover['reason_code']}: {failover['reason']}")
    for reason in router_rejections(story):
        st.markdown(f"rejected by the router: {reason}")
    if story["fills"]:
        st.dataframe(
            frame(story["fills"], FILL_COLUMNS),
            hide_index=True,
            key=f"fills_{intent_id}",
        )


def quality_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    columns = ["broker_name", "bucket", "orders", *(name for name, _ in QUALITY)]
    table = frame(rows, columns)
    for name, _ in QUALITY:
        table[name] = pd.to_numeric(table[name])
    return table


def quality_chart(table: pd.DataFrame, measure: str, title: str) -> alt.Chart:
    chart: alt.Chart = (
        alt.Chart(table, title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("bucket:T", title=None),
            y=alt.Y(f"{measure}:Q", title=None),
            color=alt.Color("broker_name:N", title="broker"),
            tooltip=["broker_name", "bucket", "orders", measure],
        )
        .properties(height=220)
    )
    return chart


def show_quality(rows: list[dict[str, Any]]) -> None:
    if not rows:
        st.info("no orders in this window yet")
        return
    table = quality_frame(rows)
    left, right = st.columns(2)
    for k, (measure, title) in enumerate(QUALITY):
        with left if k % 2 == 0 else right:
            st.altair_chart(quality_chart(table, measure, title), key=f"quality_{measure}")


def preview_form(backend: Backend) -> None:
    with st.form("preview"):
        cells = st.columns(6)
        symbol = cells[0].text_input("symbol", value="AAPL")
        asset = cells[1].selectbox("asset class", [str(a) for a in AssetClass])
        side = cells[2].selectbox("side", [str(s) for s in Side])
        quantity = cells[3].text_input("quantity", value="10")
        order_type = cells[4].selectbox("order type", [str(t) for t in OrderType])
        limit_price = cells[5].text_input("limit price", value="")
        asked = st.form_submit_button("Preview the route")
    if not asked:
        return
    try:
        intent = OrderIntent(
            intent_id=f"preview-{uuid.uuid4().hex[:12]}",
            strategy_id="dashboard-preview",
            symbol=symbol,
            asset_class=AssetClass(asset),
            side=Side(side),
            quantity=quantity or None,
            order_type=OrderType(order_type),
            limit_price=limit_price or None,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'intent'}: {e['msg']}" for e in exc.errors())
        st.error(f"not a valid order: {problems}")
        return
    preview = answer("route preview (the router)", lambda: backend.preview(intent))
    if preview is None:
        return
    if preview.error:
        st.error(preview.error)
    elif preview.decision is None:
        st.warning(f"no broker would take it ({preview.rejection_code}): {preview.rejection_reason}")
    else:
        d = preview.decision
        st.success(f"would go to **{d.broker}** by `{d.rule}`: {d.reason}")
        route = {"broker_name": str(d.broker), "rule": d.rule, "decision": d.model_dump(mode="json")}
        st.dataframe(
            frame(candidate_rows(route), CANDIDATE_COLUMNS),
            hide_index=True,
            key="preview_candidates",
        )
