"""The monthly best-execution report (``mbx report execution``): per broker, order type and size
bucket, how orders fared against the quote the router decided with, and a Rule 606-style routing
table. Every figure comes from SQL over the audit store; this module only divides the sums.

An *order* is one row of ``orders``: one attempt at one broker (a failover makes a second order at
the next broker). It belongs to the month its route was decided in (``decided_at``; an order the
router rejected before choosing a broker has no decision time and counts by ``created_at``), and
its fills, fees and failover count with it whenever they happened. docs/operations.md defines each
figure.
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
    SELECT coalesce(o.broker_name, :router) AS venue, o.order_type, o.status, f.shares, f.value, f.fees,
           coalesce(o.notional, o.quantity * o.reference_price) AS size_usd,
           date_part('epoch', o.acknowledged_at - o.decided_at) * 1000 AS ack_ms,
           date_part('epoch', o.first_fill_at - o.decided_at) * 1000 AS first_fill_ms,
           CASE WHEN o.status = 'filled' THEN date_part('epoch', f.last_fill_at - o.decided_at) * 1000 END
               AS complete_fill_ms,
           CASE WHEN o.filled_quantity > 0 AND o.average_price IS NOT NULL AND r.mid > 0 THEN o.filled_quantity END
               AS quoted_shares,
           CASE WHEN o.side = 'buy' THEN r.ask - o.average_price ELSE o.average_price - r.bid END AS improvement,
           CASE WHEN o.side = 'buy' THEN 2 ELSE -2 END * (o.average_price - r.mid) AS effective_spread,
           r.mid,
           EXISTS (SELECT 1 FROM failover_events e WHERE e.intent_id = o.intent_id AND e.attempt = o.attempt
                     AND e.failed_broker = o.broker_name) AS failed_over
      FROM orders o
      -- The quote of the order's route: decided at the same instant as the order, so within the
      -- month; only the three prices leave the scan (OFFSET 0 keeps the decision out of the join).
      LEFT JOIN (SELECT intent_id, attempt, broker_name, (decision -> 'quote' ->> 'bid')::numeric AS bid,
                        (decision -> 'quote' ->> 'ask')::numeric AS ask,
                        (decision -> 'quote' ->> 'mid')::numeric AS mid
                   FROM multi_broker_routes
                  WHERE decided_at >= :start AND decided_at < :end OFFSET 0) r
        ON r.intent_id = o.intent_id AND r.attempt = o.attempt AND r.broker_name = o.broker_name
      -- Every fill of the month's orders: none comes before its order's decision (a day of margin
      -- for a broker's clock), later ones count whenever they came.
      LEFT JOIN (SELECT intent_id, broker_name, sum(quantity) AS shares, sum(quantity * price) AS value,
                        sum(fee) AS fees, max(executed_at) AS last_fill_at
                   FROM trade_logs
                  WHERE executed_at >= CAST(:start AS timestamptz) - interval '1 day'
                  GROUP BY intent_id, broker_name) f
        ON f.intent_id = o.intent_id AND f.broker_name = o.broker_name
     WHERE coalesce(o.decided_at, o.created_at) >= :start AND coalesce(o.decided_at, o.created_at) < :end
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


async def execution_report(engine: AsyncEngine, month: str) -> ExecutionReport:
    """The report for ``month`` (YYYY-MM, UTC); raises :class:`BadMonth` for anything else."""
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
