"""One intent's whole story from the audit trail: its hold for approval (if any), route decisions,
failovers, orders and fills (``mbx explain``, the dashboard's routing tab)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

STORY_QUERIES = {
    "approvals": "SELECT * FROM approvals WHERE intent_id = :i ORDER BY step_no",
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


def number(value: Any) -> str:
    """A database number as people write it: 2, not 2.0000000000; 0, not 0E-10."""
    if isinstance(value, Decimal):
        return f"{value.normalize():f}" if value else "0"
    return str(value)


def by_attempt(story: dict[str, list[dict[str, Any]]]) -> list[tuple[dict[str, Any], Any, Any]]:
    """Each route decision with its order at that broker and its failover (None when there is none)."""
    failovers = {f["attempt"]: f for f in story["failovers"]}
    orders = {(o["attempt"], o["broker_name"]): o for o in story["orders"]}
    return [
        (route, orders.get((route["attempt"], route["broker_name"])), failovers.get(route["attempt"]))
        for route in story["routes"]
    ]


def order_outcome(order: dict[str, Any]) -> tuple[str, str]:
    """(status, what else to say): ", 10 filled @ 332.73 (reason)"."""
    price = order["average_price"]
    filled = f", {number(order['filled_quantity'])} filled @ {number(price)}" if price else ""
    reason = f" ({order['reason']})" if order["reason"] else ""
    return order["status"], filled + reason


def router_rejections(story: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Why the router refused the intent, if it did (an order row with no broker)."""
    return [o["reason"] for o in story["orders"] if o["broker_name"] is None]


def approval_lines(steps: list[dict[str, Any]]) -> list[str]:
    """Each step of the intent's hold for approval in words: who, when, with what note."""
    lines = []
    for row in steps:
        at = f"{row['at'].astimezone():%Y-%m-%d %H:%M:%S}"
        note = f": {row['note']}" if row["note"] else ""
        step = row["step"]
        if step == "pending":
            estimated = row["estimated_notional"]
            worth = f", about {number(estimated)} USD at the quote" if estimated is not None else ", no quote"
            needed = "1 approver" if row["approvers_needed"] == 1 else f"{row['approvers_needed']} approvers"
            lines.append(
                f"held for approval at {at} by rule {row['rule']} ({needed}{worth}); "
                f"expires {row['expires_at'].astimezone():%Y-%m-%d %H:%M:%S}"
            )
        elif step == "approved":
            given = f"{row['approvals_given']} of {row['approvers_needed']}"
            lines.append(f"approved by {row['operator']} at {at} ({given}){note}")
        elif step == "denied":
            lines.append(f"denied by {row['operator']} at {at}{note}")
        elif step == "expired":
            given = f"{row['approvals_given']} of {row['approvers_needed']} approvals"
            lines.append(f"expired at {at}, not decided in time ({given})")
        elif step == "cancelled":
            lines.append(f"cancelled by its strategy at {at} while it waited{note}")
        else:
            lines.append(f"released to routing at {at}")
    return lines
