"""The Execution tab's pure parts: the months it offers, and the rows its charts draw."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from dashboard.execution import fill_rate_frame, months, routing_frame, timing_frame
from workers.readmodel.execution_report import ExecutionReport, ExecutionRow, RoutingRow


def row(broker: str | None, order_type: str | None = None, **figures: object) -> ExecutionRow:
    values: dict[str, object] = {
        "broker": broker, "order_type": order_type, "size_bucket": "<1k" if order_type else None, "orders": 4,
        "notional": Decimal(400), "filled": 3, "cancelled": 1, "rejected": 0, "failed": 0, "failovers": 0,
        "ack_ms": (10.0, 18.0, 19.8), "first_fill_ms": (20.0, 28.0, 29.8), "complete_fill_ms": None,
        "quoted_orders": 3, "quoted_shares": Decimal(3), "improvement_usd": Decimal(0),
        "effective_spread_usd": Decimal(0), "quoted_value": Decimal(300), "filled_shares": Decimal(3),
        "filled_value": Decimal(300), "fees": Decimal("0.03"),
    }  # fmt: skip
    return ExecutionRow(**(values | figures))  # type: ignore[arg-type]  (the figures are the row's fields)


def test_months_start_with_the_current_one_and_cross_the_year() -> None:
    """The picker offers the current month first, then the ones before it, across a new year."""
    assert months(datetime(2026, 2, 3, tzinfo=UTC), 4) == ["2026-02", "2026-01", "2025-12", "2025-11"]
    assert len(months(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))) == 24


def test_charts_draw_each_broker_line_and_leave_out_missing_timings() -> None:
    """Only broker total lines are charted; a timing no order of a broker has is not drawn,
    and routing shares split directed from chosen per broker."""
    report = ExecutionReport(
        "2026-11",
        (row("alpaca", "market"), row("alpaca"), row("router", ack_ms=None, first_fill_ms=None, filled=0), row(None)),
        (
            RoutingRow("alpaca", "default:equity", False, 3, Decimal("0.75")),
            RoutingRow("alpaca", "preference", True, 1, Decimal("0.25")),
        ),
    )
    brokers = [r for r in report.rows if r.broker is not None and r.order_type is None]
    assert fill_rate_frame(brokers).to_dict("records") == [
        {"broker": "alpaca", "fill rate": 0.75, "orders": 4, "filled": 3},
        {"broker": "router", "fill rate": 0.0, "orders": 4, "filled": 0},
    ]
    timing = timing_frame(brokers).to_dict("records")
    assert [(t["broker"], t["measure"], t["p90"]) for t in timing] == [
        ("alpaca", "acknowledgement", 18.0),
        ("alpaca", "first fill", 28.0),
    ]
    shares = routing_frame(report).to_dict("records")
    assert [(s["routed"], s["routes"], s["share"]) for s in shares] == [
        ("directed by strategy", 1, 0.25),
        ("chosen by mbx", 3, 0.75),
    ]
