"""Postgres writes of the aggregator: one transaction per batch, inbox dedup inside it.

``apply`` records each message id in ``inbox`` and applies only the ids that were new, all in
one transaction, so a redelivered or replayed message changes nothing. Within a batch, the
newest report per order wins (``report_seq``), and a stale report never overwrites a newer one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import (
    BrokerName,
    BrokerStatus,
    ExecutionReport,
    FailoverEvent,
    Fill,
    Message,
    PositionSnapshot,
    RouteDecision,
)
from workers.db.models import (
    BrokerAccount,
    FailoverRecord,
    MultiBrokerConnection,
    MultiBrokerRoute,
    Order,
    Position,
    TradeLog,
)
from workers.venues.capabilities import CAPABILITIES


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded bus message with the subject it arrived on."""

    subject: str
    message: Message


class AuditStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def apply(self, batch: list[Envelope]) -> int:
        """Persist a batch in one transaction; returns how many messages were new."""
        if not batch:
            return 0
        async with self.engine.begin() as conn:
            fresh = await self._claim(conn, batch)
            if not fresh:
                return 0
            routes = [e.message for e in fresh if isinstance(e.message, RouteDecision)]
            reports = [e.message for e in fresh if isinstance(e.message, ExecutionReport)]
            fills = [e.message for e in fresh if isinstance(e.message, Fill)]
            failovers = [e.message for e in fresh if isinstance(e.message, FailoverEvent)]
            snapshots = [e.message for e in fresh if isinstance(e.message, PositionSnapshot)]
            statuses = [e.message for e in fresh if isinstance(e.message, BrokerStatus)]
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
            if failovers:
                rows = {(f.intent_id, f.attempt): _failover_row(f) for f in failovers}
                await conn.execute(_INSERT_FAILOVER, list(rows.values()))
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
            await conn.execute(delete(Position).where(Position.broker_name == broker))
            if snap.positions:
                await conn.execute(
                    insert(Position).values(
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
                        ]
                    )
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
        claimed = await conn.execute(_CLAIM, {"ids": list(unique), "subjects": [e.subject for e in unique.values()]})
        new_ids = set(claimed.scalars())
        return [e for mid, e in unique.items() if mid in new_ids]

    async def _insert_routes(self, conn: AsyncConnection, routes: list[RouteDecision]) -> None:
        route_rows = {(r.intent_id, r.attempt): _route_row(r) for r in routes}
        await conn.execute(_INSERT_ROUTE, list(route_rows.values()))
        order_rows = {(str(r.broker), r.intent_id): _order_row_from_route(r) for r in routes}
        await conn.execute(_INSERT_ORDER, list(order_rows.values()))

    async def _upsert_reports(self, conn: AsyncConnection, reports: list[ExecutionReport]) -> None:
        newest: dict[tuple[str | None, str], ExecutionReport] = {}
        for r in reports:
            key = (str(r.broker) if r.broker else None, r.client_order_id)
            if key not in newest or newest[key].report_seq < r.report_seq:
                newest[key] = r
        await conn.execute(_UPSERT_REPORT, [_order_row_from_report(r) for r in newest.values()])

    async def _insert_fills(self, conn: AsyncConnection, fills: list[Fill]) -> None:
        rows = {f.fill_id: _fill_row(f) for f in fills}
        await conn.execute(_INSERT_FILL, list(rows.values()))


# Built once and executed with a list of rows: SQLAlchemy caches the compiled statement and
# batches the rows (insertmanyvalues), instead of compiling a new multi-row VALUES per batch.
# The inbox claim is one statement whatever the batch size (arrays, not a VALUES row per
# message), so the server and the driver see the same query text every time.
_CLAIM = text(
    "INSERT INTO inbox (message_id, subject) "
    "SELECT * FROM unnest(CAST(:ids AS varchar[]), CAST(:subjects AS varchar[])) "
    "ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
)
_INSERT_ROUTE = insert(MultiBrokerRoute).on_conflict_do_nothing(index_elements=["intent_id", "attempt"])
_INSERT_ORDER = insert(Order).on_conflict_do_nothing(index_elements=["broker_name", "client_order_id"])
_INSERT_FILL = insert(TradeLog).on_conflict_do_nothing(index_elements=["fill_id"])
_INSERT_FAILOVER = insert(FailoverRecord).on_conflict_do_nothing(index_elements=["intent_id", "attempt"])
_report = insert(Order)
_UPSERT_REPORT = _report.on_conflict_do_update(
    index_elements=["broker_name", "client_order_id"],
    set_={
        "broker_order_id": func.coalesce(func.nullif(_report.excluded.broker_order_id, ""), Order.broker_order_id),
        "status": _report.excluded.status,
        "quantity": func.coalesce(_report.excluded.quantity, Order.quantity),
        "filled_quantity": _report.excluded.filled_quantity,
        "average_price": _report.excluded.average_price,
        "fees": _report.excluded.fees,
        "report_seq": _report.excluded.report_seq,
        "reason": _report.excluded.reason,
        "updated_at": func.now(),
    },
    where=Order.report_seq < _report.excluded.report_seq,
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
        "decision": r.model_dump(
            mode="json", include={"reason", "candidates", "excluded", "config_version", "message_id", "reference_price"}
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
    }


def _order_row_from_report(r: ExecutionReport) -> dict[str, Any]:
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
