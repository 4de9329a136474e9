"""One intent's whole story from the audit trail: its route decisions, failovers, orders and
fills (``mbx explain``, the dashboard's routing tab)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

STORY_QUERIES = {
    "routes": "SELECT * FROM multi_broker_routes WHERE intent_id = :i ORDER BY attempt",
    "failovers": "SELECT * FROM failover_events WHERE intent_id = :i ORDER BY attempt",
    "orders": "SELECT * FROM orders WHERE intent_id = :i ORDER BY attempt, id",
    "fills": "SELECT * FROM trade_logs WHERE intent_id = :i ORDER BY executed_at, id",
}


async def intent_story(engine: AsyncEngine, intent_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every row about ``intent_id``, per table, in the order things happened."""
    async with engine.connect() as conn:
        return {
            name: [dict(r) for r in (await conn.execute(text(sql), {"i": intent_id})).mappings()]
            for name, sql in STORY_QUERIES.items()
        }
