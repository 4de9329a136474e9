"""Postgres writes of the aggregator: one transaction per batch, inbox dedup inside it.

``apply`` records each message id in ``inbox`` and applies only the ids that were new, all in
one transaction, so a redelivered or replayed message changes nothing. Within a batch, the
newest report per order wins (``report_seq``), and a stale report never overwrites a newer one;
parent orders' reports likewise (``parent_records``). An approval step is one row per
(intent, step number), however many copies of it arrive (the pending step comes twice: for
operators and for the strategy, under two message ids).

What the best-execution report reads is kept on the order row (migration 0014): the route's
quote, and the totals and last time of its fills and whether it failed over, which may be
stored before or after the order. Each new fill or failover is added onto its order by the
statement that inserts it (a duplicate inserts nothing, so adds nothing), or, when the order is
not stored yet, into ``fills_awaiting_order``, which the order's insert takes and empties.
Replicas apply batches concurrently: each batch first takes a transaction lock on each of its
intents, so an order and a fill of the same intent are never written by two transactions that
cannot see each other's rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import (
    ApprovalEvent,
    BrokerName,
    BrokerStatus,
    ExecutionReport,
    FailoverEvent,
    Fill,
    Message,
    ParentReport,
    PositionSnapshot,
    RouteDecision,
)
from workers.aggregator.parent_records import store_parent_reports, with_split_reason
from workers.domain.capabilities import CAPABILITIES
from workers.domain.order_state import acknowledged_by_broker
from workers.domain.parents import parent_of
from workers.platform.db.models import (
    BrokerAccount,
    MultiBrokerConnection,
    Position,
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded bus message with the subject it arrived on."""

    subject: str
    message: Message


INBOX_RETENTION = timedelta(days=7, hours=2)
"""How long the inbox remembers a message id: the streams keep messages 7 days (a consumer
replayed from the start sees them again) and publishes are deduplicated for an hour; one more
hour of margin."""


class AuditStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def prune_inbox(self, older_than: timedelta = INBOX_RETENTION, batch: int = 10_000) -> int:
        """Forget message ids received more than ``older_than`` ago, ``batch`` rows per
        transaction (short locks); returns how many were deleted."""
        deleted = 0
        while True:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    text(
                        "DELETE FROM inbox WHERE message_id IN (SELECT message_id FROM inbox "
                        "WHERE received_at < now() - make_interval(secs => :age) LIMIT :n)"
                    ),
                    {"age": older_than.total_seconds(), "n": batch},
                )
            deleted += result.rowcount or 0
            if (result.rowcount or 0) < batch:
                return deleted

    async def apply(self, batch: list[Envelope]) -> int:
        """Persist a batch in one transaction; returns how many messages were new."""
        if not batch:
            return 0
        async with self.engine.begin() as conn:
            await _lock_intents(conn, batch)
            fresh = await self._claim(conn, batch)
            if not fresh:
                return 0
            routes = [e.message for e in fresh if isinstance(e.message, RouteDecision)]
            reports = [e.message for e in fresh if isinstance(e.message, ExecutionReport)]
            fills = [e.message for e in fresh if isinstance(e.message, Fill)]
            failovers = [e.message for e in fresh if isinstance(e.message, FailoverEvent)]
            snapshots = [e.message for e in fresh if isinstance(e.message, PositionSnapshot)]
            statuses = [e.message for e in fresh if isinstance(e.message, BrokerStatus)]
            parents = [e.message for e in fresh if isinstance(e.message, ParentReport)]
            approvals = [e.message for e in fresh if isinstance(e.message, ApprovalEvent)]
            if statuses:
                await self._upsert_statuses(conn, statuses)
            if snapshots:
                await self._apply_snapshots(conn, snapshots)
            if routes:
                await self._insert_routes(conn, routes)
            if reports:
                await self._upsert_reports(conn, reports)
            if fills:
                await self._insert_fills(conn, fills)
            if parents:  # after the routes and reports: it links the child orders they stored
                await store_parent_reports(conn, parents)
            if failovers:
                rows = {(f.intent_id, f.attempt): _failover_row(f) for f in failovers}
                await _INSERT_FAILOVER.run(conn, list(rows.values()))
            if approvals:
                steps = {(a.intent_id, a.step_no): _approval_row(a) for a in approvals}
                await _INSERT_APPROVAL.run(conn, list(steps.values()))
            return len(fresh)

    async def _upsert_statuses(self, conn: AsyncConnection, statuses: list[BrokerStatus]) -> None:
        newest: dict[BrokerName, BrokerStatus] = {}
        for st in statuses:
            if st.broker not in newest or newest[st.broker].last_seen < st.last_seen:
                newest[st.broker] = st
        for st in newest.values():
            stmt = insert(MultiBrokerConnection).values(
                broker_name=str(st.broker),
                status="connected" if st.connected else "disconnected",
                asset_types=_asset_types(st.broker),
                last_connected_at=st.last_seen if st.connected else None,
            )
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["broker_name"],
                    set_={
                        "status": stmt.excluded.status,
                        "last_connected_at": func.coalesce(
                            stmt.excluded.last_connected_at, MultiBrokerConnection.last_connected_at
                        ),
                        "updated_at": func.now(),
                    },
                )
            )

    async def _apply_snapshots(self, conn: AsyncConnection, snapshots: list[PositionSnapshot]) -> None:
        """The newest snapshot per broker replaces that broker's positions and account values;
        one older than what is stored already (a late redelivery) changes nothing."""
        newest: dict[BrokerName, PositionSnapshot] = {}
        for snap in snapshots:
            if snap.broker not in newest or newest[snap.broker].created_at < snap.created_at:
                newest[snap.broker] = snap
        for snap in newest.values():
            broker = str(snap.broker)
            stmt = insert(MultiBrokerConnection).values(
                broker_name=broker, asset_types=_asset_types(snap.broker), last_synced_at=snap.created_at
            )
            claimed = await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["broker_name"],
                    set_={"last_synced_at": snap.created_at, "updated_at": func.now()},
                    where=(MultiBrokerConnection.last_synced_at.is_(None))
                    | (MultiBrokerConnection.last_synced_at < snap.created_at),
                ).returning(MultiBrokerConnection.id)
            )
            if claimed.first() is None:
                continue
            # Only what changed is written: rewriting every position of every snapshot (one after
            # each burst of fills) cost more the more symbols a broker held, and left a dead row
            # per position each time for autovacuum; after a 5,000-intent burst that work slowed
            # the whole machine (docs/architecture.md, "Latency after a burst").
            held = [p.symbol for p in snap.positions]
            await conn.execute(delete(Position).where(Position.broker_name == broker, Position.symbol.not_in(held)))
            if snap.positions:
                await _UPSERT_POSITIONS.run(
                    conn,
                    [
                        {
                            "broker_name": broker,
                            "symbol": p.symbol,
                            "asset_class": str(p.asset_class),
                            "quantity": p.quantity,
                            "average_cost": p.average_cost,
                            "market_price": p.market_price,
                            "market_value": p.market_value,
                            "unrealized_pnl": p.unrealized_pnl,
                        }
                        for p in snap.positions
                    ],
                )
            account = insert(BrokerAccount).values(
                broker_name=broker,
                account_id=snap.account.account_id,
                currency=snap.account.currency,
                cash=snap.account.cash,
                buying_power=snap.account.buying_power,
                portfolio_value=snap.account.portfolio_value,
            )
            await conn.execute(
                account.on_conflict_do_update(
                    index_elements=["broker_name"],
                    set_={
                        "account_id": account.excluded.account_id,
                        "currency": account.excluded.currency,
                        "cash": account.excluded.cash,
                        "buying_power": account.excluded.buying_power,
                        "portfolio_value": account.excluded.portfolio_value,
                        "updated_at": func.now(),
                    },
                )
            )

    async def _claim(self, conn: AsyncConnection, batch: list[Envelope]) -> list[Envelope]:
        unique: dict[str, Envelope] = {}
        for envelope in batch:
            unique.setdefault(envelope.message.message_id, envelope)
        claimed = await _CLAIM.run(conn, [{"message_id": mid, "subject": e.subject} for mid, e in unique.items()])
        new_ids = set(claimed)
        return [e for mid, e in unique.items() if mid in new_ids]

    async def _insert_routes(self, conn: AsyncConnection, routes: list[RouteDecision]) -> None:
        route_rows = {(r.intent_id, r.attempt): _route_row(r) for r in routes}
        await _INSERT_ROUTE.run(conn, list(route_rows.values()))
        order_rows = {(str(r.broker), r.intent_id): _order_row_from_route(r) for r in routes}
        await _INSERT_ORDER.run(conn, list(order_rows.values()))

    async def _upsert_reports(self, conn: AsyncConnection, reports: list[ExecutionReport]) -> None:
        newest: dict[tuple[str | None, str], ExecutionReport] = {}
        acknowledged: dict[tuple[str | None, str], datetime] = {}
        for r in reports:
            key = (str(r.broker) if r.broker else None, r.client_order_id)
            if key not in newest or newest[key].report_seq < r.report_seq:
                newest[key] = r
            # The earliest acknowledgement of the batch, whichever report is stored: the
            # "accepted" report and the fill after it often arrive in one batch.
            if acknowledged_by_broker(r) and (key not in acknowledged or r.created_at < acknowledged[key]):
                acknowledged[key] = r.created_at
        await _UPSERT_REPORT.run(conn, [_order_row_from_report(r, acknowledged.get(key)) for key, r in newest.items()])

    async def _insert_fills(self, conn: AsyncConnection, fills: list[Fill]) -> None:
        rows = {f.fill_id: _fill_row(f) for f in fills}
        await _INSERT_FILL.run(conn, list(rows.values()))


_LOCK_INTENTS = text(
    "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(i, 14) AS k "
    "FROM unnest(CAST(:intents AS varchar[])) i ORDER BY k) AS keys"
)


async def _lock_intents(conn: AsyncConnection, batch: list[Envelope]) -> None:
    """Lock each intent of the batch's orders, fills and failovers until the transaction ends,
    in one order for every transaction (so two batches cannot deadlock on these locks)."""
    intents = {
        e.message.intent_id
        for e in batch
        if isinstance(e.message, RouteDecision | ExecutionReport | Fill | FailoverEvent)
    }
    if intents:
        await conn.execute(_LOCK_INTENTS, {"intents": sorted(intents)})


class _ArrayInsert:
    """``INSERT ... SELECT * FROM unnest(<one array per column>)``: one statement per table per
    batch whatever its size, so the statement text never changes (the driver prepares it and the
    server caches the plan) and the rows travel as arrays instead of one bind per row. The
    arrays go in PostgreSQL's binary format, on the transaction's own connection: the text format
    escapes every element with a regular expression, which cost more than the insert.

    ``derived``: more columns, each an expression over the row ``u`` and ``joined``'s relations.
    ``then``: a statement run over the inserted rows (``inserted``, the insert's RETURNING)."""

    def __init__(
        self,
        table: str,
        columns: dict[str, str],
        tail: str,
        *,
        derived: dict[str, str] | None = None,
        joined: str = "",
        then: str = "",
    ) -> None:
        self.columns = columns
        arrays = ", ".join(f"CAST(%({c})b AS {t}[])" for c, t in columns.items())  # b: binary format
        names = ", ".join([*columns, *(derived or {})])
        rows = f"unnest({arrays}) AS u({', '.join(columns)}) {joined}"
        values = ", ".join(["u.*", *(derived or {}).values()])
        insert = f"INSERT INTO {table} ({names}) SELECT {values} FROM {rows} {tail}"  # noqa: S608  (names are constants of this module)
        self.statement = f"WITH inserted AS ({insert}) {then}" if then else insert

    def params(self, rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
        return {
            c: [json.dumps(r[c]) if t == "jsonb" and not isinstance(r[c], str) else r[c] for r in rows]
            for c, t in self.columns.items()
        }

    async def run(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[Any]:
        """Insert ``rows``; returns the first column of any rows the statement returns."""
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None  # a connection inside a transaction
        async with driver.cursor() as cursor:
            await cursor.execute(self.statement, self.params(rows))
            return [row[0] for row in await cursor.fetchall()] if cursor.description else []


_CLAIM = _ArrayInsert(
    "inbox", {"message_id": "varchar", "subject": "varchar"}, "ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
)
_INSERT_ROUTE = _ArrayInsert(
    "multi_broker_routes",
    {
        "intent_id": "varchar",
        "strategy_id": "varchar",
        "broker_name": "varchar",
        "attempt": "integer",
        "rule": "varchar",
        "score": "float8",
        "estimated_fee": "numeric",
        "fallback_chain": "jsonb",
        "failover_from": "varchar",
        "decision": "jsonb",
        "decided_at": "timestamptz",
    },
    "ON CONFLICT (intent_id, attempt) DO NOTHING",
)
_POSITION_VALUES = ("asset_class", "quantity", "average_cost", "market_price", "market_value", "unrealized_pnl")
_UPSERT_POSITIONS = _ArrayInsert(
    "positions",
    {
        "broker_name": "varchar",
        "symbol": "varchar",
        "asset_class": "varchar",
        "quantity": "numeric",
        "average_cost": "numeric",
        "market_price": "numeric",
        "market_value": "numeric",
        "unrealized_pnl": "numeric",
    },
    "ON CONFLICT (broker_name, symbol) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _POSITION_VALUES)
    + ", updated_at = now() WHERE ("
    + ", ".join(f"positions.{c}" for c in _POSITION_VALUES)
    + ") IS DISTINCT FROM ("
    + ", ".join(f"excluded.{c}" for c in _POSITION_VALUES)
    + ")",
)
_ORDER_COLUMNS = {
    "intent_id": "varchar",
    "strategy_id": "varchar",
    "broker_name": "varchar",
    "client_order_id": "varchar",
    "attempt": "integer",
    "symbol": "varchar",
    "asset_class": "varchar",
    "side": "varchar",
    "order_type": "varchar",
    "quantity": "numeric",
    "notional": "numeric",
    "status": "varchar",
    "report_seq": "integer",
}
# An order stored from its route carries the decision's time and reference price; one stored
# first from a report gets them when its route is stored (trigger, migration 0010). A child of a
# parent order carries its parent's id; one stored first from a report gets it from the parent's
# next report (``parent_records``).
# A new order takes the fills and failovers of its intent at its broker stored before it (kept
# in fills_awaiting_order by _INSERT_FILL and _INSERT_FAILOVER), and deletes them from there; an
# order row already stored keeps its values (the upsert does not set them). Looking in trade_logs
# and failover_events instead, for every order stored, halved the aggregator's throughput.
_FILLS_AND_FAILOVER = {
    "traded_quantity": "a.traded_quantity",
    "traded_value": "a.traded_value",
    "traded_fees": "a.traded_fees",
    "last_fill_at": "a.last_fill_at",
    "failed_over": "coalesce(u.attempt = ANY(a.failed_attempts), false)",
}
_AWAITING = "LEFT JOIN fills_awaiting_order a ON a.intent_id = u.intent_id AND a.broker_name = u.broker_name"
_TAKEN = (
    "DELETE FROM fills_awaiting_order a USING inserted i WHERE a.intent_id = i.intent_id "
    "AND a.broker_name = i.broker_name"
)
_INSERT_ORDER = _ArrayInsert(
    "orders",
    _ORDER_COLUMNS
    | {
        "decided_at": "timestamptz",
        "reference_price": "numeric",
        "parent_intent_id": "varchar",
        "quote_bid": "numeric",
        "quote_ask": "numeric",
        "quote_mid": "numeric",
    },
    "ON CONFLICT (broker_name, client_order_id) DO NOTHING RETURNING intent_id, broker_name",
    derived=_FILLS_AND_FAILOVER,
    joined=_AWAITING,
    then=_TAKEN,
)
_NEWER = "orders.report_seq < excluded.report_seq"
_FROM_NEWER_REPORT = {
    "broker_order_id": "coalesce(nullif(excluded.broker_order_id, ''), orders.broker_order_id)",
    "status": "excluded.status",
    "quantity": "coalesce(excluded.quantity, orders.quantity)",
    "filled_quantity": "excluded.filled_quantity",
    "average_price": "excluded.average_price",
    "fees": "excluded.fees",
    "report_seq": "excluded.report_seq",
    "reason": "excluded.reason",
}
# A newer report replaces the order's state; a stale one (it arrived late) changes nothing of it.
# The two times are kept earliest whatever the report's age: a stale "accepted" that arrives
# after the fill still holds the moment the broker acknowledged the order.
_UPSERT_REPORT = _ArrayInsert(
    "orders",
    _ORDER_COLUMNS
    | {
        "broker_order_id": "varchar",
        "filled_quantity": "numeric",
        "average_price": "numeric",
        "fees": "numeric",
        "reason": "text",
        "first_fill_at": "timestamptz",
        "acknowledged_at": "timestamptz",
    },
    "ON CONFLICT (broker_name, client_order_id) DO UPDATE SET "
    + ", ".join(f"{c} = CASE WHEN {_NEWER} THEN {value} ELSE orders.{c} END" for c, value in _FROM_NEWER_REPORT.items())
    + ", updated_at = now(), first_fill_at = least(orders.first_fill_at, excluded.first_fill_at), "
    "acknowledged_at = least(orders.acknowledged_at, excluded.acknowledged_at) "
    f"WHERE {_NEWER} OR excluded.acknowledged_at < coalesce(orders.acknowledged_at, 'infinity') "
    "OR excluded.first_fill_at < coalesce(orders.first_fill_at, 'infinity') RETURNING intent_id, broker_name",
    derived=_FILLS_AND_FAILOVER,
    joined=_AWAITING,
    then=_TAKEN,
)
_INSERT_FILL = _ArrayInsert(
    "trade_logs",
    {
        "fill_id": "varchar",
        "intent_id": "varchar",
        "strategy_id": "varchar",
        "broker_name": "varchar",
        "broker_order_id": "varchar",
        "symbol": "varchar",
        "side": "varchar",
        "quantity": "numeric",
        "price": "numeric",
        "fee": "numeric",
        "executed_at": "timestamptz",
    },
    "ON CONFLICT (fill_id) DO NOTHING RETURNING intent_id, broker_name, quantity, price, fee, executed_at",
    # Only the fills new to the store are added: to their order, else to fills_awaiting_order.
    then=", new AS (SELECT intent_id, broker_name, sum(quantity) AS quantity, sum(quantity * price) AS value, "
    "sum(fee) AS fees, max(executed_at) AS last_fill_at FROM inserted GROUP BY intent_id, broker_name), "
    "added AS (UPDATE orders o SET traded_quantity = coalesce(o.traded_quantity, 0) + n.quantity, "
    "traded_value = coalesce(o.traded_value, 0) + n.value, traded_fees = coalesce(o.traded_fees, 0) + n.fees, "
    "last_fill_at = greatest(o.last_fill_at, n.last_fill_at), updated_at = now() FROM new n "
    "WHERE o.intent_id = n.intent_id AND o.broker_name = n.broker_name RETURNING o.intent_id, o.broker_name) "
    "INSERT INTO fills_awaiting_order AS a (intent_id, broker_name, traded_quantity, traded_value, traded_fees, "
    "last_fill_at) SELECT * FROM new n WHERE NOT EXISTS (SELECT 1 FROM added d WHERE d.intent_id = n.intent_id "
    "AND d.broker_name = n.broker_name) ON CONFLICT (intent_id, broker_name) DO UPDATE SET "
    "traded_quantity = coalesce(a.traded_quantity, 0) + excluded.traded_quantity, "
    "traded_value = coalesce(a.traded_value, 0) + excluded.traded_value, "
    "traded_fees = coalesce(a.traded_fees, 0) + excluded.traded_fees, "
    "last_fill_at = greatest(a.last_fill_at, excluded.last_fill_at)",
)
_INSERT_FAILOVER = _ArrayInsert(
    "failover_events",
    {
        "intent_id": "varchar",
        "strategy_id": "varchar",
        "failed_broker": "varchar",
        "attempt": "integer",
        "reason_code": "varchar",
        "reason": "text",
        "occurred_at": "timestamptz",
    },
    "ON CONFLICT (intent_id, attempt) DO NOTHING RETURNING intent_id, attempt, failed_broker",
    then=", marked AS (UPDATE orders o SET failed_over = true, updated_at = now() FROM inserted n "
    "WHERE o.intent_id = n.intent_id AND o.attempt = n.attempt AND o.broker_name = n.failed_broker "
    "RETURNING o.intent_id, o.broker_name) "
    "INSERT INTO fills_awaiting_order AS a (intent_id, broker_name, failed_attempts) "
    "SELECT n.intent_id, n.failed_broker, array_agg(n.attempt) FROM inserted n WHERE NOT EXISTS "
    "(SELECT 1 FROM marked m WHERE m.intent_id = n.intent_id AND m.broker_name = n.failed_broker) "
    "GROUP BY n.intent_id, n.failed_broker ON CONFLICT (intent_id, broker_name) DO UPDATE SET "
    "failed_attempts = a.failed_attempts || excluded.failed_attempts",
)
_INSERT_APPROVAL = _ArrayInsert(
    "approvals",
    {
        "intent_id": "varchar",
        "step_no": "integer",
        "step": "varchar",
        "strategy_id": "varchar",
        "rule": "varchar",
        "operator": "varchar",
        "note": "text",
        "approvers_needed": "integer",
        "approvals_given": "integer",
        "symbol": "varchar",
        "side": "varchar",
        "quantity": "numeric",
        "notional": "numeric",
        "estimated_notional": "numeric",
        "expires_at": "timestamptz",
        "at": "timestamptz",
    },
    "ON CONFLICT (intent_id, step_no) DO NOTHING",
)


def _asset_types(broker: BrokerName) -> list[str]:
    return sorted(str(a) for a in CAPABILITIES[broker].assets)


def _route_row(r: RouteDecision) -> dict[str, Any]:
    best = r.candidates[0] if r.candidates else None
    return {
        "intent_id": r.intent_id,
        "strategy_id": r.strategy_id,
        "broker_name": str(r.broker),
        "attempt": r.attempt,
        "rule": r.rule,
        "score": best.total if best else None,
        "estimated_fee": best.estimated_fee if best else None,
        "fallback_chain": [str(b) for b in r.fallback_chain],
        "failover_from": str(r.failover_from) if r.failover_from else None,
        "decision": with_split_reason(
            r.model_dump_json(
                include={
                    "reason",
                    "candidates",
                    "excluded",
                    "config_version",
                    "message_id",
                    "reference_price",
                    "quote",
                    "closes_position",
                }
            ),
            r.intent,
        ),
        "decided_at": r.created_at,
    }


def _order_row_from_route(r: RouteDecision) -> dict[str, Any]:
    i = r.intent
    return {
        "intent_id": r.intent_id,
        "strategy_id": r.strategy_id,
        "broker_name": str(r.broker),
        "client_order_id": i.intent_id,
        "attempt": r.attempt,
        "symbol": i.symbol,
        "asset_class": str(i.asset_class),
        "side": str(i.side),
        "order_type": str(i.order_type),
        "quantity": i.quantity,
        "notional": i.notional,
        "status": "new",
        "report_seq": 0,
        "decided_at": r.created_at,
        "reference_price": r.reference_price,
        "parent_intent_id": parent_of(i),
        "quote_bid": r.quote.bid if r.quote else None,
        "quote_ask": r.quote.ask if r.quote else None,
        "quote_mid": r.quote.mid if r.quote else None,
    }


def _order_row_from_report(r: ExecutionReport, acknowledged_at: datetime | None) -> dict[str, Any]:
    """The order's row from its newest report of a batch; ``acknowledged_at`` is the batch's
    earliest report that showed the broker holds the order."""
    return {
        "intent_id": r.intent_id,
        "strategy_id": r.strategy_id,
        "broker_name": str(r.broker) if r.broker else None,
        "client_order_id": r.client_order_id,
        "broker_order_id": r.broker_order_id,
        "attempt": r.attempt,
        "symbol": r.symbol,
        "asset_class": str(r.asset_class),
        "side": str(r.side),
        "order_type": str(r.order_type),
        "quantity": r.quantity,
        "notional": r.notional,
        "filled_quantity": r.filled_quantity,
        "average_price": r.average_price,
        "fees": r.fees,
        "status": str(r.status),
        "report_seq": r.report_seq,
        "reason": r.reason or None,
        "first_fill_at": r.first_fill_at,
        "acknowledged_at": acknowledged_at,
    }


def _fill_row(f: Fill) -> dict[str, Any]:
    return {
        "fill_id": f.fill_id,
        "intent_id": f.intent_id,
        "strategy_id": f.strategy_id,
        "broker_name": str(f.broker),
        "broker_order_id": f.broker_order_id,
        "symbol": f.symbol,
        "side": str(f.side),
        "quantity": f.quantity,
        "price": f.price,
        "fee": f.fee,
        "executed_at": f.executed_at,
    }


def _failover_row(f: FailoverEvent) -> dict[str, Any]:
    return {
        "intent_id": f.intent_id,
        "strategy_id": f.strategy_id,
        "failed_broker": str(f.failed_broker),
        "attempt": f.attempt,
        "reason_code": f.reason_code,
        "reason": f.reason,
        "occurred_at": f.created_at,
    }


def _approval_row(a: ApprovalEvent) -> dict[str, Any]:
    return {
        "intent_id": a.intent_id,
        "step_no": a.step_no,
        "step": str(a.step),
        "strategy_id": a.strategy_id,
        "rule": a.rule,
        "operator": a.operator,
        "note": a.note,
        "approvers_needed": a.approvers_needed,
        "approvals_given": a.approvals_given,
        "symbol": a.intent.symbol,
        "side": str(a.intent.side),
        "quantity": a.intent.quantity,
        "notional": a.intent.notional,
        "estimated_notional": a.estimated_notional,
        "expires_at": a.expires_at,
        "at": a.created_at,
    }
