"""Postgres writes of parent orders: ``parent_orders`` and the link of each child order to its parent.

A parent's newest ``ParentReport`` (highest ``report_seq``) is its row; an older one arriving
late changes nothing. A child order is linked through ``orders.parent_intent_id``: from its
route (``parent_of`` the routed intent) when the order is stored from the route, and from the
parent's report for any child order already stored without the link (one stored first from an
execution report, or a router rejection, which has no route). A split child's route keeps why
the split gave it its broker (``with_split_reason``).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import OrderIntent, ParentReport
from workers.domain.parents import SPLIT_KEY, parent_of
from workers.platform.db.models import ParentOrder

PLANNED = "planned"
"""A child's status in a ParentReport before it is sent: it has no order yet."""

_UPDATED = ("status", "filled_quantity", "average_price", "arrival_price", "slippage_bps", "children", "reason")
_LINK_CHILDREN = text(
    "UPDATE orders SET parent_intent_id = :parent "
    "WHERE intent_id = ANY(CAST(:children AS varchar[])) AND parent_intent_id IS NULL"
)


def with_split_reason(decision: str, intent: OrderIntent) -> str:
    """A route's stored decision (JSON), with why the split gave a child its broker and quantity
    (``split``) when the routed intent is a split's child. The route alone does not say it: a
    child names its broker as a preference, so its rule is the preference."""
    reason = intent.metadata.get(SPLIT_KEY)
    if not reason or parent_of(intent) is None:
        return decision
    return json.dumps({**json.loads(decision), SPLIT_KEY: reason})


def parent_row(report: ParentReport) -> dict[str, Any]:
    return {
        "parent_intent_id": report.intent_id,
        "strategy_id": report.strategy_id,
        "symbol": report.symbol,
        "side": str(report.side),
        "status": str(report.status),
        "quantity": report.quantity,
        "filled_quantity": report.filled_quantity,
        "average_price": report.average_price,
        "arrival_price": report.arrival_price,
        "slippage_bps": report.slippage_bps,
        "execution": report.execution.model_dump(mode="json", exclude_none=True) if report.execution else None,
        "children": [child.model_dump(mode="json") for child in report.children],
        "report_seq": report.report_seq,
        "reason": report.reason or None,
    }


async def store_parent_reports(conn: AsyncConnection, reports: list[ParentReport]) -> None:
    """Keep each parent's newest report, and link its children's orders stored without the link.

    Run after the batch's routes and execution reports, so child orders stored in the same batch
    are linked too."""
    newest: dict[str, ParentReport] = {}
    for r in reports:
        if r.intent_id not in newest or newest[r.intent_id].report_seq < r.report_seq:
            newest[r.intent_id] = r
    stmt = insert(ParentOrder).values([parent_row(r) for r in sorted(newest.values(), key=lambda r: r.intent_id)])
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[ParentOrder.parent_intent_id],
            set_={
                **{column: stmt.excluded[column] for column in _UPDATED},
                "report_seq": stmt.excluded.report_seq,
                "execution": func.coalesce(stmt.excluded.execution, ParentOrder.execution),
                "updated_at": func.now(),
            },
            where=ParentOrder.report_seq < stmt.excluded.report_seq,
        )
    )
    links = [
        {"parent": r.intent_id, "children": sorted(c.intent_id for c in r.children if c.status != PLANNED)}
        for r in newest.values()
    ]
    links = [link for link in links if link["children"]]
    if links:
        await conn.execute(_LINK_CHILDREN, links)
