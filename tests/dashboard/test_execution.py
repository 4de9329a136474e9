"""The Execution tab: the month's best-execution report over orders that went through a real
stack (AppTest), its charts, and the HTML report to download."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import eventually, fetch_all
from tests.dashboard.conftest import Flow, charts, open_app, run, table, texts
from workers.readmodel.execution_format import milliseconds

pytestmark = pytest.mark.integration

TABS = ["Broker status", "Portfolio", "Routing", "Configuration", "Execution"]
ACK = "ack p50/p90/p99 ms"


async def test_the_execution_tab_reports_the_month_per_broker_with_charts_and_a_download(flow: Flow) -> None:
    """This month's orders are counted per broker, each broker's time to acknowledgement is the
    one its order recorded, the charts draw every broker, and an empty month says so."""

    async def acknowledged() -> list[Any] | None:
        # The fills are on the bus; the aggregator may still be storing the last reports.
        rows = await fetch_all(
            flow.db,
            "SELECT broker_name, extract(epoch FROM acknowledged_at - decided_at) * 1000 AS ack_ms FROM orders"
            " WHERE strategy_id = 'dash'",
        )
        return rows if rows and all(o["ack_ms"] is not None for o in rows) else None

    orders = await eventually(acknowledged, timeout=20)
    assert all(o["ack_ms"] > 0 for o in orders)
    by_broker: dict[str, list[float]] = {}
    for o in orders:
        by_broker.setdefault(o["broker_name"], []).append(float(o["ack_ms"]))

    at = await open_app()
    assert [t.label for t in at.tabs if t.label in TABS] == TABS
    assert at.selectbox(key="execution_month").value == f"{datetime.now(UTC):%Y-%m}"
    quality = table(at, "broker", "order type", "size (USD)", "orders", "fill rate", ACK)
    totals = quality[(quality["order type"] == "all") & (quality["broker"] != "all")].set_index("broker")
    assert sorted(totals.index) == sorted(by_broker)
    for broker, acks in by_broker.items():
        assert int(totals.loc[broker, "orders"]) == len(acks)
        assert totals.loc[broker, "fill rate"] == "100.0%"
        if len(acks) == 1:  # one order: its own time is every percentile
            assert totals.loc[broker, ACK] == milliseconds((acks[0], acks[0], acks[0]))
    [month_total] = quality[quality["broker"] == "all"].to_dict("records")
    assert int(month_total["orders"]) == len(orders)

    routing = table(at, "broker", "routes", "share", "directed", "chosen by mbx").set_index("broker")
    assert sorted(routing.index) == sorted(by_broker)
    assert sum(int(n) for n in routing["routes"]) == len(orders)
    rules = table(at, "broker", "rule", "directed by strategy", "routes", "share")
    assert {"default:equity", "default:crypto"} <= set(rules["rule"])

    drawn = {c.spec["title"]: c for c in charts(at) if "title" in c.spec}
    fill_rate = drawn["fill rate by broker"].rows
    assert {r["broker"]: r["fill rate"] for r in fill_rate} == dict.fromkeys(by_broker, 1.0)
    timing = drawn["time from decision by broker, p50 (ms)"].rows
    assert {(r["broker"], r["measure"]) for r in timing} == {
        (b, m) for b in by_broker for m in ("acknowledgement", "first fill", "complete fill")
    }
    shares = drawn["routing share by broker"].rows
    assert {r["broker"] for r in shares} == set(by_broker)
    assert sum(r["share"] for r in shares) == pytest.approx(1.0)

    [download] = at.get("download_button")
    assert download.proto.label == "Download the HTML report"

    empty = at.selectbox(key="execution_month").options[-1]
    at.selectbox(key="execution_month").select(empty)
    await run(at)
    assert f"no orders or route decisions are recorded for {empty}" in texts(at, "info")
