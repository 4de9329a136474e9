"""Parent orders for the dashboard: the recent parents, and one parent's progress over time
(the quantity its schedule called for by each moment against the quantity its children filled).

The schedule is told from the parent's ``execution`` block and the time its row was first
stored (``parent_orders.created_at``, its first report, moments after it arrived): a TWAP's
slices at ``i * duration_s / slices`` from then, each an even share; an iceberg or a split is
one step of the whole quantity at the start. Known limit: a TWAP's jitter and the rounding of
shares to whole units are not shown, so the scheduled line is the plan's shape, not each slice's
exact time and size (``mbx explain`` tells those). Fills come from ``trade_logs`` of the parent's
children (named in its report, or linked through ``orders.parent_intent_id``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from workers.readmodel.parents import describe_execution

WORKING = ("working", "partially_filled")
"""The statuses of a parent that still works, and can be cancelled."""

RECENT_PARENTS_SQL = """
    SELECT parent_intent_id, strategy_id, symbol, side, status, quantity, filled_quantity, average_price,
           arrival_price, slippage_bps, execution, children, reason, created_at, updated_at
      FROM parent_orders ORDER BY created_at DESC, parent_intent_id LIMIT :n
"""
PARENT_FILLS_SQL = """
    SELECT t.executed_at, t.intent_id, t.broker_name, t.quantity, t.price
      FROM trade_logs t
     WHERE t.intent_id = ANY(CAST(:children AS varchar[]))
        OR t.intent_id IN (SELECT o.intent_id FROM orders o WHERE o.parent_intent_id = :p)
     ORDER BY t.executed_at, t.id
"""


@dataclass(frozen=True, slots=True)
class ProgressPoint:
    at: datetime
    quantity: Decimal
    """Cumulative quantity by ``at``."""
    series: str
    """``scheduled`` or ``filled``."""


def algorithm(execution: Mapping[str, Any] | None) -> str:
    """The algorithms an execution block names, joined: "twap + split", "iceberg", "split"."""
    if not execution:
        return ""
    return " + ".join(name for name in ("twap", "vwap", "iceberg", "split") if execution.get(name) is not None)


def children_by_broker(children: list[Mapping[str, Any]] | None) -> dict[str, int]:
    """How many children each broker was given (a child not routed yet counts as "unrouted")."""
    counts: dict[str, int] = {}
    for child in children or []:
        broker = str(child.get("broker") or "unrouted")
        counts[broker] = counts.get(broker, 0) + 1
    return dict(sorted(counts.items()))


async def recent_parents(engine: AsyncEngine, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` parents, newest first, each with its ``algorithm``, its execution in
    words (``plan``) and its ``children_by_broker``."""
    async with engine.connect() as conn:
        rows = [dict(r) for r in (await conn.execute(text(RECENT_PARENTS_SQL), {"n": limit})).mappings()]
    for row in rows:
        row["algorithm"] = algorithm(row["execution"])
        row["plan"] = describe_execution(row["execution"])
        row["children_by_broker"] = children_by_broker(row["children"])
        row["working"] = row["status"] in WORKING
    return rows


async def parent_fills(engine: AsyncEngine, parent: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every fill of the parent's children, oldest first."""
    named = [c["intent_id"] for c in parent.get("children") or []]
    async with engine.connect() as conn:
        found = await conn.execute(text(PARENT_FILLS_SQL), {"children": named, "p": parent["parent_intent_id"]})
        return [dict(r) for r in found.mappings()]


def scheduled(parent: Mapping[str, Any]) -> list[ProgressPoint]:
    """The cumulative quantity the parent's plan called for, one point per step."""
    start: datetime = parent["created_at"]
    total = Decimal(str(parent["quantity"]))
    twap = (parent.get("execution") or {}).get("twap")
    if not twap:
        return [ProgressPoint(start, total, "scheduled")]
    slices = int(twap["slices"])
    duration = float(twap["duration_s"])
    return [
        ProgressPoint(start + timedelta(seconds=duration * number / slices), total * (number + 1) / slices, "scheduled")
        for number in range(slices)
    ]


def filled(parent: Mapping[str, Any], fills: Sequence[Mapping[str, Any]]) -> list[ProgressPoint]:
    """The cumulative quantity filled, from zero at the start and one point per fill."""
    points = [ProgressPoint(parent["created_at"], Decimal(0), "filled")]
    done = Decimal(0)
    for fill in fills:
        done += Decimal(str(fill["quantity"]))
        points.append(ProgressPoint(fill["executed_at"], done, "filled"))
    return points


def as_steps(points: list[ProgressPoint], until: datetime) -> list[ProgressPoint]:
    """A cumulative series as a step line: each level held until the next point, the last one
    until ``until`` (the scheduled and filled lines then end together)."""
    steps: list[ProgressPoint] = []
    for k, point in enumerate(points):
        if k:
            steps.append(ProgressPoint(point.at, points[k - 1].quantity, point.series))
        steps.append(point)
    if points and until > points[-1].at:
        steps.append(ProgressPoint(until, points[-1].quantity, points[-1].series))
    return steps


async def parent_progress(engine: AsyncEngine, parent: Mapping[str, Any], now: datetime) -> list[ProgressPoint]:
    """Scheduled and filled quantity over time, as step lines up to the parent's last report (or
    ``now`` while it works)."""
    fills = await parent_fills(engine, parent)
    plan, done = scheduled(parent), filled(parent, fills)
    ends = [p.at for p in (*plan, *done)]
    until = max([*ends, now if parent["status"] in WORKING else parent["updated_at"]])
    return as_steps(plan, until) + as_steps(done, until)
