"""A closed month's best-execution report, kept once computed (``execution_report_months``,
migration 0014), so asking for it again reads one row instead of the month's orders.

Only a month that has ended is kept. Its report is served from the table when nothing it was
computed from has changed since, which is told by the month's *stamp*: how many orders count in
the month, how many route decisions were made in it, and the latest ``orders.updated_at`` among
those orders. Every write of an order moves its ``updated_at`` (a report, a fill or failover
added by the aggregator, the route's trigger), a new order has a new ``updated_at``, and an order
that leaves the month changes the count; route decisions are only ever added.

``updated_at`` is the writing transaction's start, and a transaction can commit after the stamp
was read with a time older than the stamp's latest: so a kept report is served only when its
month's latest change is at least ``SETTLE`` older than the report (longer than any write of
the aggregator lasts: its batches are cut off after ``db_timeout_s``, 15 s by default). A month
changed within ``SETTLE`` of its computation is computed again when next asked for, and kept
again.

A database user that may not write the table (a read-only role) gets the report computed and
not kept.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from psycopg.errors import InsufficientPrivilege, ReadOnlySqlTransaction
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from workers.readmodel.execution_report import ExecutionReport, ExecutionRow, RoutingRow, month_window

SETTLE = timedelta(minutes=10)
"""How much older than a kept report its month's latest order change must be for it to be served."""

STAMP_SQL = """
SELECT (SELECT count(*) FROM orders
         WHERE coalesce(decided_at, created_at) >= :start AND coalesce(decided_at, created_at) < :end) AS orders,
       (SELECT max(updated_at) FROM orders
         WHERE coalesce(decided_at, created_at) >= :start AND coalesce(decided_at, created_at) < :end)
           AS orders_changed_at,
       (SELECT count(*) FROM multi_broker_routes WHERE decided_at >= :start AND decided_at < :end) AS routes,
       now() AS read_at
"""
KEPT_SQL = "SELECT orders, routes, orders_changed_at, computed_at, report FROM execution_report_months WHERE month = :m"
KEEP_SQL = """
INSERT INTO execution_report_months (month, orders, routes, orders_changed_at, computed_at, report)
VALUES (:m, :orders, :routes, :changed, :computed, CAST(:report AS jsonb))
ON CONFLICT (month) DO UPDATE SET orders = excluded.orders, routes = excluded.routes,
    orders_changed_at = excluded.orders_changed_at, computed_at = excluded.computed_at, report = excluded.report
"""


@dataclass(frozen=True)
class MonthStamp:
    orders: int
    routes: int
    orders_changed_at: datetime | None


_DECIMALS = {f.name for f in fields(ExecutionRow) if f.type in ("Decimal", Decimal)}
_PERCENTILES = {"ack_ms", "first_fill_ms", "complete_fill_ms"}


def to_json(report: ExecutionReport) -> dict[str, Any]:
    """The report as JSON values: decimals as their exact text, percentiles as floats."""

    def plain(row: ExecutionRow | RoutingRow) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Decimal) else v for k, v in asdict(row).items()}

    return {"rows": [plain(r) for r in report.rows], "routing": [plain(r) for r in report.routing]}


def from_json(month: str, kept: dict[str, Any]) -> ExecutionReport:
    def row(values: dict[str, Any]) -> ExecutionRow:
        typed: dict[str, Any] = {
            k: Decimal(v) if k in _DECIMALS else (tuple(v) if k in _PERCENTILES and v is not None else v)
            for k, v in values.items()
        }
        return ExecutionRow(**typed)

    routing = tuple(RoutingRow(**(r | {"share": Decimal(r["share"])})) for r in kept["routing"])
    return ExecutionReport(month, tuple(row(r) for r in kept["rows"]), routing)


def servable(kept: Any, stamp: MonthStamp) -> bool:
    """Whether a kept report (a row of ``execution_report_months``) still holds for ``stamp``."""
    if (kept.orders, kept.routes, kept.orders_changed_at) != (stamp.orders, stamp.routes, stamp.orders_changed_at):
        return False
    return stamp.orders_changed_at is None or stamp.orders_changed_at < kept.computed_at - SETTLE


async def kept_report(
    engine: AsyncEngine, month: str, compute: Callable[[], Awaitable[ExecutionReport]]
) -> ExecutionReport:
    """The closed ``month``'s report from the table when it still holds, else ``compute()``'s,
    kept for next time."""
    start, end = month_window(month)
    async with engine.connect() as conn:
        now = (await conn.execute(text(STAMP_SQL), {"start": start, "end": end})).one()
        kept = (await conn.execute(text(KEPT_SQL), {"m": month})).one_or_none()
    stamp = MonthStamp(now.orders, now.routes, now.orders_changed_at)
    if kept is not None and servable(kept, stamp):
        return from_json(month, kept.report)
    # The stamp is read before the report is computed: a change made meanwhile shows in the next
    # stamp, and the report is computed again then.
    report = await compute()
    await _keep(engine, month, stamp, now.read_at, report)
    return report


async def _keep(engine: AsyncEngine, month: str, stamp: MonthStamp, at: datetime, report: ExecutionReport) -> None:
    values = {
        "m": month,
        "orders": stamp.orders,
        "routes": stamp.routes,
        "changed": stamp.orders_changed_at,
        "computed": at,
        "report": json.dumps(to_json(report)),
    }
    try:
        async with engine.begin() as conn:
            await conn.execute(text(KEEP_SQL), values)
    except DBAPIError as exc:
        if not isinstance(exc.orig, InsufficientPrivilege | ReadOnlySqlTransaction):
            raise
