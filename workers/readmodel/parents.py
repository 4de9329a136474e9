"""Parent orders from the audit trail: a parent's state and every child's outcome, and the parent a
child order belongs to (``mbx explain``).

A parent's row is its newest ``ParentReport`` (``parent_orders``); each child is an ordinary
intent with its own routes and orders, linked through ``orders.parent_intent_id``. A child the
parent's report names but that has no order yet (planned, or not stored yet) is told from the
report alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

PARENT_SQL = "SELECT * FROM parent_orders WHERE parent_intent_id = :p"
CHILD_ORDERS_SQL = """
    SELECT * FROM orders WHERE parent_intent_id = :p OR intent_id = ANY(CAST(:children AS varchar[]))
     ORDER BY intent_id, attempt, id
"""
CHILD_ROUTES_SQL = """
    SELECT intent_id, attempt, broker_name, rule, decision ->> 'reason' AS reason, decision ->> 'split' AS split
      FROM multi_broker_routes WHERE intent_id = ANY(CAST(:children AS varchar[]))
     ORDER BY intent_id, attempt
"""
CHILD_OF_SQL = """
    SELECT o.parent_intent_id, p.children
      FROM orders o LEFT JOIN parent_orders p ON p.parent_intent_id = o.parent_intent_id
     WHERE o.intent_id = :i AND o.parent_intent_id IS NOT NULL
     LIMIT 1
"""


@dataclass(frozen=True, slots=True)
class ChildStory:
    """One child of a parent as the audit trail tells it: its latest order where there is one,
    else what the parent's report says."""

    intent_id: str
    slice_number: int | None
    quantity: Decimal | None
    broker: str | None
    status: str
    filled_quantity: Decimal
    average_price: Decimal | None
    attempts: int
    rule: str | None
    """The rule of its latest route; None when it was never routed."""
    reason: str
    """Why it went where it went (its latest route's reason), or why it was refused or ended."""
    split: str = ""
    """Why the split gave it its broker and quantity (a split's child), from its route."""


@dataclass(frozen=True, slots=True)
class ParentStory:
    parent_intent_id: str
    parent: dict[str, Any] | None
    """The ``parent_orders`` row; None while no report of the parent is stored."""
    children: list[ChildStory]

    @property
    def found(self) -> bool:
        return self.parent is not None or bool(self.children)

    def filled_by_broker(self) -> dict[str, Decimal]:
        """Filled quantity per broker over every child, brokers in name order."""
        filled: dict[str, Decimal] = {}
        for child in self.children:
            if child.broker and child.filled_quantity:
                filled[child.broker] = filled.get(child.broker, Decimal(0)) + child.filled_quantity
        return dict(sorted(filled.items()))


async def parent_story(engine: AsyncEngine, parent_intent_id: str) -> ParentStory:
    """The parent's row and each child's outcome, children in slice order."""
    async with engine.connect() as conn:
        found = (await conn.execute(text(PARENT_SQL), {"p": parent_intent_id})).mappings().first()
        parent = dict(found) if found is not None else None
        named = [c["intent_id"] for c in (parent or {}).get("children") or []]
        orders = [
            dict(r)
            for r in (await conn.execute(text(CHILD_ORDERS_SQL), {"p": parent_intent_id, "children": named})).mappings()
        ]
        ids = sorted({*named, *(o["intent_id"] for o in orders)})
        routes = [dict(r) for r in (await conn.execute(text(CHILD_ROUTES_SQL), {"children": ids})).mappings()]
    return ParentStory(parent_intent_id, parent, children_of(parent, orders, routes))


def children_of(
    parent: Mapping[str, Any] | None, orders: Iterable[Mapping[str, Any]], routes: Iterable[Mapping[str, Any]]
) -> list[ChildStory]:
    """Each child from the parent's report entry, its latest order and its latest route; in
    slice order, then part."""
    reported = {c["intent_id"]: c for c in (parent or {}).get("children") or []}
    latest_order = _latest(orders)
    latest_route = _latest(routes)
    stories = []
    for intent_id in {*reported, *latest_order}:
        entry, order, route = reported.get(intent_id, {}), latest_order.get(intent_id), latest_route.get(intent_id)
        slice_number = entry.get("slice_number")
        if slice_number is None:
            slice_number, _ = _slice_and_part(intent_id)
        if order is not None and order["broker_name"] is None:
            reason = f"refused by the router: {order['reason'] or 'no reason given'}"
        elif order is not None and order["reason"]:
            reason = str(order["reason"])
        else:
            reason = route["reason"] if route is not None else ""
        stories.append(
            ChildStory(
                intent_id=intent_id,
                slice_number=slice_number,
                quantity=_decimal(order["quantity"] if order is not None else entry.get("quantity")),
                broker=(order["broker_name"] if order is not None else None) or entry.get("broker"),
                status=str(order["status"] if order is not None else entry.get("status", "")),
                filled_quantity=_decimal(
                    order["filled_quantity"] if order is not None else entry.get("filled_quantity")
                )
                or Decimal(0),
                average_price=_decimal(order["average_price"]) if order is not None else None,
                attempts=route["attempt"] if route is not None else 0,
                rule=route["rule"] if route is not None else None,
                reason=reason,
                split=(route.get("split") if route is not None else None) or "",
            )
        )
    return sorted(stories, key=_slice_order)


async def child_of(engine: AsyncEngine, intent_id: str) -> tuple[str, int | None] | None:
    """The parent ``intent_id``'s order is a child of, and its slice; None for any other intent."""
    async with engine.connect() as conn:
        row = (await conn.execute(text(CHILD_OF_SQL), {"i": intent_id})).mappings().first()
    if row is None:
        return None
    entry = next((c for c in row["children"] or [] if c.get("intent_id") == intent_id), None)
    slice_number = entry["slice_number"] if entry is not None else _slice_and_part(intent_id)[0]
    return str(row["parent_intent_id"]), slice_number


def describe_execution(execution: Mapping[str, Any] | None) -> str:
    """An execution block (``Execution``, as JSON) in words: "twap 1800 s in 10 slices, split over
    up to 5 brokers"."""
    if not execution:
        return "algorithm not reported"
    parts = []
    if twap := execution.get("twap"):
        jitter = f", jitter {twap['jitter_pct']:g}%" if twap.get("jitter_pct") else ""
        parts.append(f"twap {_duration(float(twap['duration_s']))} in {twap['slices']} slices{jitter}")
    if iceberg := execution.get("iceberg"):
        parts.append(f"iceberg showing {iceberg['display_quantity']}")
    if (split := execution.get("split")) is not None:
        least = split.get("min_child_quantity") or (
            f"{split['min_child_notional']} USD" if split.get("min_child_notional") else None
        )
        parts.append(
            f"split over up to {split.get('max_brokers')} brokers"
            + (f", children of at least {least}" if least else "")
        )
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    """1800 -> 30m, 5400 -> 1h30m, 45 -> 45s."""
    whole = round(seconds)
    if whole != seconds or whole < 60:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n)


def _slice_order(child: ChildStory) -> tuple[bool, int, bool, int, str]:
    """Slices in order, then parts; children without numbers last."""
    _, part = _slice_and_part(child.intent_id)
    return (child.slice_number is None, child.slice_number or 0, part is None, part or 0, child.intent_id)


def _latest(rows: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Per intent id, the row of its latest attempt (rows come in attempt order)."""
    return {row["intent_id"]: row for row in rows}


def _slice_and_part(intent_id: str) -> tuple[int | None, int | None]:
    """The slice and part a child id ends with (``<parent>:<slice>.<part>``), when it does."""
    _, _, tail = intent_id.rpartition(":")
    slice_text, _, part_text = tail.partition(".")
    if slice_text.isdecimal() and part_text.isdecimal():
        return int(slice_text), int(part_text)
    return None, None


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))
