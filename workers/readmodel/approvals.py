"""Decisions on held orders as the audit trail keeps them (``approvals``, migration 0013): the
newest approvals, denials, expiries and releases, for the dashboard's approvals tab. Bounded:
the newest N steps through the (at) index."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

DECISIONS_LIMIT = 50

DECISIONS_SQL = """
    SELECT at, intent_id, step, operator, note, approvals_given, approvers_needed, rule, strategy_id,
           symbol, side, quantity, notional, estimated_notional
      FROM approvals
     WHERE step <> 'pending'
  ORDER BY at DESC, step_no DESC
     LIMIT :limit
"""


async def recent_decisions(engine: AsyncEngine, limit: int = DECISIONS_LIMIT) -> list[dict[str, Any]]:
    """The newest ``limit`` steps after a hold (approved, denied, expired, released), newest first."""
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(text(DECISIONS_SQL), {"limit": limit})).mappings()]
