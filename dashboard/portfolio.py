"""The unified portfolio: positions by symbol and by broker, allocation per broker against its
target and the cross-broker limit, and one symbol's exposure across brokers."""

from __future__ import annotations

from decimal import Decimal

import altair as alt
import pandas as pd
import streamlit as st

from contracts import Portfolio
from dashboard.backend import Backend
from dashboard.widgets import answer, frame
from workers.domain.config import MbxConfig

HUNDRED = Decimal(100)


def render(backend: Backend) -> None:
    result = answer("portfolio (the aggregator)", backend.portfolio)
    config = answer("live config", backend.live_config)
    if result is None or config is None:
        return
    cells = st.columns(4)
    cells[0].metric("portfolio value", f"{result.portfolio_value:,.2f}")
    cells[1].metric("cash", f"{result.cash:,.2f}")
    cells[2].metric("unrealized P&L", f"{result.unrealized_pnl:,.2f}")
    cells[3].metric("realized P&L", f"{result.realized_pnl:,.2f}")
    if result.as_of:
        st.caption(f"broker snapshots as of {result.as_of:%Y-%m-%d %H:%M:%S} UTC")
    by_symbol, by_broker = st.tabs(["By symbol", "By broker"])
    with by_symbol:
        st.dataframe(symbol_table(result), hide_index=True, key="positions_by_symbol")
    with by_broker:
        st.dataframe(broker_table(result), hide_index=True, key="positions_by_broker")
    st.subheader("Allocation per broker", anchor=False)
    st.altair_chart(allocation_chart(result, config), key="allocation")
    st.caption(
        f"bars: share of account value now and the target (brokers.<name>.allocation_percent); "
        f"red line: risk.max_broker_allocation ({config.risk.max_broker_allocation * HUNDRED:.0f}%)"
    )
    st.subheader("Cross-broker exposure", anchor=False)
    symbols = [p.symbol for p in result.positions]
    symbol = st.selectbox("symbol", symbols, key="exposure_symbol", index=0 if symbols else None)
    if symbol:
        exposure = answer("exposure (the aggregator)", lambda: backend.exposure(symbol))
        if exposure is not None:
            brokers = sorted(set(exposure.positions) | set(exposure.in_flight))
            st.dataframe(
                frame(
                    {
                        "broker": str(b),
                        "held value": exposure.positions.get(b, Decimal(0)),
                        "in flight": exposure.in_flight.get(b, Decimal(0)),
                    }
                    for b in brokers
                ),
                hide_index=True,
                key="exposure",
            )
            st.caption(f"net {exposure.net:,.2f} · gross {exposure.gross:,.2f} (USD, positions and working orders)")


def symbol_table(result: Portfolio) -> pd.DataFrame:
    return frame(
        (
            {
                "symbol": p.symbol,
                "asset": str(p.asset_class),
                "quantity": p.quantity,
                "avg cost": p.average_cost,
                "mark": p.market_price,
                "value": p.market_value,
                "unrealized": p.unrealized_pnl,
                "realized": p.realized_pnl,
                "brokers": ", ".join(f"{b} {q.normalize():f}" for b, q in sorted(p.by_broker.items())),
            }
            for p in result.positions
        ),
        ["symbol", "asset", "quantity", "avg cost", "mark", "value", "unrealized", "realized", "brokers"],
    )


def broker_table(result: Portfolio) -> pd.DataFrame:
    return frame(
        (
            {
                "broker": str(broker),
                "symbol": p.symbol,
                "quantity": quantity,
                "value": p.market_value * quantity / p.quantity if p.quantity else Decimal(0),
            }
            for p in result.positions
            for broker, quantity in sorted(p.by_broker.items())
        ),
        ["broker", "symbol", "quantity", "value"],
    )


def allocation_chart(result: Portfolio, config: MbxConfig) -> alt.LayerChart:
    rows = []
    for broker in sorted({*result.allocation, *config.enabled_brokers()}):
        target = config.brokers[broker].allocation_percent * HUNDRED if broker in config.brokers else Decimal(0)
        rows.append({"broker": str(broker), "measure": "now", "percent": float(result.allocation.get(broker, 0))})
        rows.append({"broker": str(broker), "measure": "target", "percent": float(target)})
    data = pd.DataFrame(rows, columns=["broker", "measure", "percent"])
    bars = (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("broker:N", title=None),
            xOffset="measure:N",
            y=alt.Y("percent:Q", title="% of account value"),
            color=alt.Color("measure:N", scale=alt.Scale(domain=["now", "target"], range=["#1f77b4", "#aec7e8"])),
            tooltip=["broker", "measure", "percent"],
        )
    )
    limit = pd.DataFrame({"percent": [float(config.risk.max_broker_allocation * HUNDRED)]})
    rule = alt.Chart(limit).mark_rule(color="#d62728", strokeDash=[6, 3]).encode(y="percent:Q")
    return alt.LayerChart(layer=[bars, rule])
