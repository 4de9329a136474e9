"""The recorded decisions a what-if replays (``workers.router.whatif``): first attempts in a
window, oldest first, and how many intents in it were rejected with no decision to replay."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

DECISIONS_SQL = """
    SELECT r.intent_id, r.strategy_id, r.broker_name, r.rule, r.decision, r.decided_at,
           o.symbol, o.asset_class, o.side, o.order_type, o.quantity, o.notional
      FROM multi_broker_routes r JOIN orders o
        ON o.intent_id = r.intent_id AND o.attempt = r.attempt AND o.broker_name = r.broker_name
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
    symbol, asset class, side, order type and size."""
    rejected_unrouted: int
    """Intents rejected before any broker was chosen: nothing to replay them with."""


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
