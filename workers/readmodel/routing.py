"""Routing as operators look at it: recent route decisions with filters, why each losing
candidate lost, recent failovers, execution quality per broker over time, and the config
change history. Every query is bounded (the newest N rows, inside a time window, through an
index), so a page that refreshes costs the same with a million rows in the audit trail
(``bench/dashboard_bench.py`` measures it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

ROUTES_LIMIT = 200
FAILOVERS_LIMIT = 100
HISTORY_LIMIT = 50
QUALITY_PER_BROKER = 2000
"""Orders per broker the quality charts are drawn over (the newest in the window)."""

COMPONENTS = (("cost_score", "cost"), ("speed_score", "speed"), ("fill_score", "fill quality"))


ROUTES_SQL = """
    SELECT r.decided_at, r.intent_id, r.strategy_id, r.broker_name, r.attempt, r.rule, r.score,
           r.estimated_fee, r.failover_from, r.decision, o.symbol, o.side, o.quantity, o.notional, o.status
      FROM multi_broker_routes r LEFT JOIN orders o
        ON o.intent_id = r.intent_id AND o.attempt = r.attempt AND o.broker_name = r.broker_name
     WHERE {where}
  ORDER BY r.decided_at DESC
     LIMIT :limit
"""


@dataclass(frozen=True)
class RouteFilter:
    since: datetime
    until: datetime | None = None
    strategy: str | None = None
    broker: str | None = None
    symbol: str | None = None
    rule: str | None = None


def since_hours(hours: float) -> datetime:
    """The start of a window of ``hours`` ending now."""
    return datetime.now(UTC) - timedelta(hours=hours)


async def _rows(engine: AsyncEngine, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(text(sql), params)).mappings()]


async def recent_routes(engine: AsyncEngine, where: RouteFilter, limit: int = ROUTES_LIMIT) -> list[dict[str, Any]]:
    """The newest ``limit`` route decisions matching ``where``, newest first, each with its
    order's symbol, side, size and status. Only the filters given are in the SQL (fixed
    fragments, bound values), so each shape gets its own plan on the (decided_at) indexes."""
    clauses = ["r.decided_at >= :since"]
    params: dict[str, Any] = {"since": where.since, "limit": limit}
    for column, value in (
        ("r.decided_at < :until", where.until),
        ("r.strategy_id = :strategy", where.strategy),
        ("r.broker_name = :broker", where.broker),
        ("r.rule = :rule", where.rule),
        ("o.symbol = :symbol", where.symbol.upper() if where.symbol else None),
    ):
        if value is not None:
            clauses.append(column)
            params[column.split(":")[1]] = value
    # fixed fragments only; every value is a bound parameter
    sql = ROUTES_SQL.replace("{where}", " AND ".join(clauses))
    return await _rows(engine, sql, params)


def candidate_rows(route: dict[str, Any]) -> list[dict[str, Any]]:
    """Every candidate of a decision with its scores, and in words why each one that was not
    chosen lost: the rule that decided, or the score component it fell furthest behind on."""
    decision = route["decision"]
    candidates = decision.get("candidates", [])
    winner = next((c for c in candidates if c["broker"] == route["broker_name"]), None)
    out = []
    for c in candidates:
        row = {
            "broker": c["broker"],
            "total": c["total"],
            "cost": c["cost_score"],
            "speed": c["speed_score"],
            "fill": c["fill_score"],
            "est. fee": c["estimated_fee"],
            "latency ms": c["expected_latency_ms"],
            "outcome": "chosen" if c is winner else lost_because(route, winner, c),
        }
        out.append(row)
    for e in decision.get("excluded", []):
        out.append({"broker": e["broker"], "outcome": f"left out ({e['reason_code']}): {e['reason']}"})
    return out


def lost_because(route: dict[str, Any], winner: dict[str, Any] | None, loser: dict[str, Any]) -> str:
    if route["rule"] != "score":
        return f"not chosen: {route['rule']} decided ({route['decision'].get('reason', '')})"
    if winner is None:
        return "not chosen"
    field, name = max(COMPONENTS, key=lambda item: winner[item[0]] - loser[item[0]])
    return (
        f"lower total ({loser['total']:.3f} vs {winner['total']:.3f}), "
        f"furthest behind on {name} ({loser[field]:.3f} vs {winner[field]:.3f})"
    )


async def recent_failovers(engine: AsyncEngine, since: datetime, limit: int = FAILOVERS_LIMIT) -> list[dict[str, Any]]:
    return await _rows(
        engine,
        "SELECT occurred_at, intent_id, strategy_id, failed_broker, attempt, reason_code, reason"
        " FROM failover_events WHERE occurred_at >= :since ORDER BY occurred_at DESC LIMIT :limit",
        {"since": since, "limit": limit},
    )


async def quality_over_time(
    engine: AsyncEngine,
    brokers: list[str],
    since: datetime,
    bucket: timedelta,
    per_broker: int = QUALITY_PER_BROKER,
) -> list[dict[str, Any]]:
    """Per broker and time bucket, over each broker's newest ``per_broker`` orders since
    ``since``: orders, fill rate, average slippage in bps against the decision's reference price
    (positive = worse for us), latency from decision to first fill (p50, p99, ms) and fees. One
    index range of ``orders`` per broker: the decision time, reference price and first fill time
    are on the order row (migration 0010)."""
    return await _rows(
        engine,
        """
        SELECT broker_name, date_bin(:bucket, decided_at, TIMESTAMPTZ '2000-01-01') AS bucket,
               count(*) AS orders,
               round(count(*) FILTER (WHERE status = 'filled')::numeric / count(*), 4) AS fill_rate,
               round(avg(CASE WHEN side = 'buy' THEN 1 ELSE -1 END
                         * (average_price - reference_price) / reference_price * 10000)
                     FILTER (WHERE status = 'filled' AND reference_price > 0), 3) AS slippage_bps,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM first_fill_at - decided_at) * 1000)
                   AS latency_p50_ms,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM first_fill_at - decided_at) * 1000)
                   AS latency_p99_ms,
               coalesce(sum(fees), 0) AS fees
          FROM unnest(CAST(:brokers AS text[])) AS b(name)
          CROSS JOIN LATERAL (
                SELECT o.broker_name, o.decided_at, o.status, o.side, o.average_price, o.reference_price,
                       o.first_fill_at, o.fees
                  FROM orders o
                 WHERE o.broker_name = b.name AND o.decided_at >= :since
                 ORDER BY o.decided_at DESC
                 LIMIT :per_broker) o
      GROUP BY broker_name, bucket
      ORDER BY bucket, broker_name
        """,
        {"brokers": brokers, "since": since, "bucket": bucket, "per_broker": per_broker},
    )


async def config_history(engine: AsyncEngine, limit: int = HISTORY_LIMIT) -> list[dict[str, Any]]:
    return await _rows(
        engine,
        "SELECT changed_at, revision, changed_by, summary FROM config_changes ORDER BY id DESC LIMIT :limit",
        {"limit": limit},
    )


async def recent_replays(engine: AsyncEngine, limit: int = HISTORY_LIMIT) -> list[dict[str, Any]]:
    return await _rows(
        engine,
        "SELECT replayed_at, letter_id, stage, original_subject, intent_id, replayed_by"
        " FROM dlq_replays ORDER BY id DESC LIMIT :limit",
        {"limit": limit},
    )
