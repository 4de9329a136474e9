"""The monthly best-execution report (``mbx report execution``): per broker, order type and size
bucket, how orders fared against the quote the router decided with, and a Rule 606-style routing
table. Every figure comes from SQL over the audit store; this module only divides the sums.

An *order* is one row of ``orders``: one attempt at one broker (a failover makes a second order at
the next broker). It belongs to the month its route was decided in (``decided_at``; an order the
router rejected before choosing a broker has no decision time and counts by ``created_at``), and
its fills, fees and failover count with it whenever they happened. docs/operations.md defines each
figure. A closed month's report is kept once computed (``execution_cache``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

SIZE_BUCKETS = ("<1k", "1k-10k", "10k-100k", ">=100k", "unknown")
"""Order size by notional in USD: the intent's dollar amount, else its quantity times the
reference (mid) price of the decision; ``unknown`` when neither is recorded."""
ROUTER = "router"
"""The broker column of intents the router rejected before choosing a broker."""

_MONTH = re.compile(r"(\d{4})-(\d{2})")
WORK_MEM = "128MB"

ORDERS_SQL = """
WITH measured AS (
    -- One scan of the month's orders: the route's quote, the fills' totals and last time and the
    -- failover are kept on the order row by the aggregator (migration 0014).
    SELECT coalesce(broker_name, :router) AS venue, order_type, status, failed_over,
           traded_quantity AS shares, traded_value AS value, traded_fees AS fees,
           coalesce(notional, quantity * reference_price) AS size_usd,
           date_part('epoch', acknowledged_at - decided_at) * 1000 AS ack_ms,
           date_part('epoch', first_fill_at - decided_at) * 1000 AS first_fill_ms,
           CASE WHEN status = 'filled' THEN date_part('epoch', last_fill_at - decided_at) * 1000 END
               AS complete_fill_ms,
           CASE WHEN filled_quantity > 0 AND average_price IS NOT NULL AND quote_mid > 0 THEN filled_quantity END
               AS quoted_shares,
           CASE WHEN side = 'buy' THEN quote_ask - average_price ELSE average_price - quote_bid END AS improvement,
           CASE WHEN side = 'buy' THEN 2 ELSE -2 END * (average_price - quote_mid) AS effective_spread,
           quote_mid AS mid
      FROM orders
     WHERE coalesce(decided_at, created_at) >= :start AND coalesce(decided_at, created_at) < :end
), bucketed AS (
    SELECT *, CASE WHEN size_usd IS NULL THEN 'unknown' WHEN size_usd < 1000 THEN '<1k'
                   WHEN size_usd < 10000 THEN '1k-10k' WHEN size_usd < 100000 THEN '10k-100k'
                   ELSE '>=100k' END AS bucket
      FROM measured
)
SELECT venue, order_type, bucket, grouping(order_type, bucket) AS level,
       count(*) AS orders, coalesce(sum(size_usd), 0) AS notional,
       count(*) FILTER (WHERE status = 'filled') AS filled,
       count(*) FILTER (WHERE status IN ('cancelled', 'expired')) AS cancelled,
       count(*) FILTER (WHERE status = 'rejected') AS rejected,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE failed_over) AS failovers,
       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY ack_ms) AS ack_ms,
       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY first_fill_ms) AS first_fill_ms,
       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY complete_fill_ms) AS complete_fill_ms,
       count(quoted_shares) AS quoted_orders,
       coalesce(sum(quoted_shares), 0) AS quoted_shares,
       coalesce(sum(quoted_shares * improvement), 0) AS improvement_usd,
       coalesce(sum(quoted_shares * effective_spread), 0) AS effective_spread_usd,
       coalesce(sum(quoted_shares * mid), 0) AS quoted_value,
       coalesce(sum(shares), 0) AS filled_shares, coalesce(sum(value), 0) AS filled_value,
       coalesce(sum(fees), 0) AS fees
  FROM bucketed
 GROUP BY GROUPING SETS ((venue, order_type, bucket), (venue), ())
"""

ROUTING_SQL = """
SELECT broker_name AS broker, rule,
       rule = 'preference' OR rule LIKE 'rule:%'
           OR decision -> 'excluded' @> '[{"reason_code": "rule_require"}]'::jsonb AS directed,
       count(*) AS routes
  FROM multi_broker_routes
 WHERE decided_at >= :start AND decided_at < :end
 GROUP BY 1, 2, 3
 ORDER BY 1, 2, 3
"""


class BadMonth(ValueError):
    """A month that is not written YYYY-MM."""


def month_window(month: str) -> tuple[datetime, datetime]:
    """The month ``YYYY-MM`` as [first instant, first instant of the next month) in UTC."""
    found = _MONTH.fullmatch(month.strip())
    if found is None or not 1 <= int(found[2]) <= 12 or int(found[1]) < 1970:
        raise BadMonth(f"{month!r} is not a month: write it YYYY-MM, e.g. 2026-11")
    year, number = int(found[1]), int(found[2])
    start = datetime(year, number, 1, tzinfo=UTC)
    return start, datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)


def _ratio(part: Decimal | int, whole: Decimal | int, scale: int = 1) -> Decimal | None:
    return Decimal(part) * scale / Decimal(whole) if whole else None


Percentiles = tuple[float, float, float] | None


@dataclass(frozen=True)
class ExecutionRow:
    """One line of the report. ``order_type`` and ``size_bucket`` are None on a broker's total
    line; ``broker`` is None too on the month's total line."""

    broker: str | None
    order_type: str | None
    size_bucket: str | None
    orders: int
    notional: Decimal
    filled: int
    cancelled: int
    rejected: int
    failed: int
    failovers: int
    ack_ms: Percentiles
    first_fill_ms: Percentiles
    complete_fill_ms: Percentiles
    quoted_orders: int
    quoted_shares: Decimal
    improvement_usd: Decimal
    effective_spread_usd: Decimal
    quoted_value: Decimal
    filled_shares: Decimal
    filled_value: Decimal
    fees: Decimal

    @property
    def fill_rate(self) -> Decimal | None:
        return _ratio(self.filled, self.orders)

    @property
    def cancel_rate(self) -> Decimal | None:
        return _ratio(self.cancelled, self.orders)

    @property
    def improvement_per_share(self) -> Decimal | None:
        return _ratio(self.improvement_usd, self.quoted_shares)

    @property
    def effective_spread_per_share(self) -> Decimal | None:
        return _ratio(self.effective_spread_usd, self.quoted_shares)

    @property
    def effective_spread_bps(self) -> Decimal | None:
        return _ratio(self.effective_spread_usd, self.quoted_value, 10000)

    @property
    def fee_per_share(self) -> Decimal | None:
        return _ratio(self.fees, self.filled_shares)

    @property
    def fee_per_1000_usd(self) -> Decimal | None:
        return _ratio(self.fees, self.filled_value, 1000)


@dataclass(frozen=True)
class RoutingRow:
    """Route decisions of the month at one broker under one rule (Rule 606-style)."""

    broker: str
    rule: str
    directed: bool
    routes: int
    share: Decimal


@dataclass(frozen=True)
class ExecutionReport:
    month: str
    rows: tuple[ExecutionRow, ...]
    routing: tuple[RoutingRow, ...]

    @property
    def empty(self) -> bool:
        return not self.rows and not self.routing


def _percentiles(value: list[float] | None) -> Percentiles:
    if value is None or value[0] is None:
        return None
    return (float(value[0]), float(value[1]), float(value[2]))


def _sort_key(row: ExecutionRow) -> tuple[bool, str, bool, str, int]:
    bucket = SIZE_BUCKETS.index(row.size_bucket) if row.size_bucket else -1
    return (row.broker is None, row.broker or "", row.order_type is None, row.order_type or "", bucket)


async def execution_report(engine: AsyncEngine, month: str, *, now: datetime | None = None) -> ExecutionReport:
    """The report for ``month`` (YYYY-MM, UTC); raises :class:`BadMonth` for anything else. A
    month that ended before ``now`` is read from its kept report while that still holds
    (``execution_cache``); the current month is computed each time."""
    _, end = month_window(month)
    if end <= (now or datetime.now(UTC)):
        from workers.readmodel.execution_cache import kept_report  # noqa: PLC0415  (it imports this module)

        return await kept_report(engine, month, lambda: computed_report(engine, month))
    return await computed_report(engine, month)


async def computed_report(engine: AsyncEngine, month: str) -> ExecutionReport:
    """The report for ``month`` computed from the audit store, never from a kept report."""
    start, end = month_window(month)
    window = {"start": start, "end": end}
    async with engine.connect() as conn:
        # The month's orders are sorted and hashed in memory rather than on disk (4 MB by default):
        # for this transaction only.
        await conn.execute(text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
        found = (await conn.execute(text(ORDERS_SQL), {**window, "router": ROUTER})).mappings().all()
        routed = (await conn.execute(text(ROUTING_SQL), window)).mappings().all()
    rows = []
    for r in found:
        if r["orders"] == 0:
            continue  # the grand total of an empty month
        detail = r["level"] == 0
        fields = {k: r[k] for k in ExecutionRow.__dataclass_fields__ if k in r and k not in ("broker",)}
        fields.update(
            broker=r["venue"],
            order_type=r["order_type"] if detail else None,
            size_bucket=r["bucket"] if detail else None,
            ack_ms=_percentiles(r["ack_ms"]),
            first_fill_ms=_percentiles(r["first_fill_ms"]),
            complete_fill_ms=_percentiles(r["complete_fill_ms"]),
        )
        rows.append(ExecutionRow(**fields))
    total = sum(int(r["routes"]) for r in routed)
    routing = tuple(
        RoutingRow(r["broker"], r["rule"], bool(r["directed"]), int(r["routes"]), Decimal(int(r["routes"])) / total)
        for r in routed
    )
    return ExecutionReport(month, tuple(sorted(rows, key=_sort_key)), routing)


def routing_by_broker(report: ExecutionReport) -> list[tuple[str, int, Decimal, int, int]]:
    """Per broker: routes, share of all routes, directed routes, routes chosen by mbx."""
    total = sum(r.routes for r in report.routing)
    brokers: dict[str, list[int]] = {}
    for r in report.routing:
        counts = brokers.setdefault(r.broker, [0, 0])
        counts[0 if r.directed else 1] += r.routes
    return [(broker, d + c, Decimal(d + c) / total, d, c) for broker, (d, c) in sorted(brokers.items())]
