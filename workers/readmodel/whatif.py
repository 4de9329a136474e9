"""The recorded decisions a what-if replays (``workers.router.whatif``): first attempts in a
window, oldest first, each with the approval rule that held it first if one did (the approvals
audit), and how many intents in it were rejected with no decision to replay."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

# Each route looks its order up by the orders table's own key, (broker, client order id = the
# intent id), in a LATERAL subquery the planner keeps as such (LIMIT 1; the key makes it one
# row anyway): a plain join on intent id and broker let the planner, with
# statistics from when the tables were small (after a burst of decisions, before autovacuum's
# next ANALYZE), scan a broker's index once per order: 100,000 decisions did not come back in
# minutes (bench/whatif_bench.py). One unique-index lookup per decision, whatever the statistics.
DECISIONS_SQL = """
    SELECT r.intent_id, r.strategy_id, r.broker_name, r.rule, r.decision, r.decided_at,
           o.symbol, o.asset_class, o.side, o.order_type, o.quantity, o.notional, h.rule AS held_rule
      FROM multi_broker_routes r CROSS JOIN LATERAL (
             SELECT symbol, asset_class, side, order_type, quantity, notional FROM orders
              WHERE orders.broker_name = r.broker_name AND orders.client_order_id = r.intent_id
                AND orders.intent_id = r.intent_id AND orders.attempt = r.attempt
              LIMIT 1) o
      LEFT JOIN LATERAL (
             SELECT rule FROM approvals WHERE approvals.intent_id = r.intent_id ORDER BY step_no LIMIT 1) h ON true
     WHERE r.attempt = 1 AND r.decided_at >= :since {strategy}
  ORDER BY r.decided_at, r.id
"""
REJECTED_SQL = """
    SELECT count(*) FROM orders
     WHERE broker_name IS NULL AND status = 'rejected' AND created_at >= :since {strategy}
"""


@dataclass(frozen=True)
class RecordedBook:
    decisions: list[dict[str, Any]]
    """Each first attempt's route row (``decision`` is the stored explanation) with its order's
    symbol, asset class, side, order type and size, and ``held_rule``: the approval rule that held
    the intent before it was routed (None: it was routed at once)."""
    rejected_unrouted: int
    """Intents rejected before any broker was chosen: nothing to replay them with."""

    def held_when_recorded(self) -> dict[str, str]:
        """Intent id -> the approval rule that held it, for the decisions held before routing."""
        return {row["intent_id"]: row["held_rule"] for row in self.decisions if row["held_rule"] is not None}


async def recorded_book(engine: AsyncEngine, since: datetime, strategy: str | None = None) -> RecordedBook:
    params: dict[str, Any] = {"since": since}
    where = ""
    if strategy is not None:
        where, params["strategy"] = "AND r.strategy_id = :strategy", strategy
    async with engine.connect() as conn:
        rows = (await conn.execute(text(DECISIONS_SQL.replace("{strategy}", where)), params)).mappings().all()
        rejected_sql = REJECTED_SQL.replace("{strategy}", where.replace("r.", ""))
        rejected = (await conn.execute(text(rejected_sql), params)).scalar_one()
    return RecordedBook([dict(r) for r in rows], int(rejected))
