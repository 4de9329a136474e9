"""The mbx schema. One database for every broker; ``broker_name`` on every trading row.

Migrations in ``migrations/`` create exactly this; a test runs Alembic's check to keep them in
step.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    column,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Money = Numeric(28, 10)
Quantity = Numeric(28, 10)
BrokerCol = String(20)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONB, list[Any]: JSONB}


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class MultiBrokerConnection(Base):
    """Connection state of each broker (10 columns, as the PRD specifies)."""

    __tablename__ = "multi_broker_connections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    broker_name: Mapped[str] = mapped_column(BrokerCol, nullable=False, unique=True)
    status: Mapped[str] = mapped_column(String(20), nullable=False, server_default="disconnected")
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="true")
    asset_types: Mapped[list[Any]] = mapped_column(nullable=False, server_default="[]")
    fee_schedule: Mapped[dict[str, Any]] = mapped_column(nullable=False, server_default="{}")
    priority: Mapped[int] = mapped_column(Integer, nullable=False, server_default="100")
    last_connected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = _now()


class MultiBrokerRoute(Base):
    """Append-only log of routing decisions (12 columns, as the PRD specifies).

    ``decision`` holds the whole explanation: every candidate's score breakdown, every excluded
    broker with its reason, the reason in words and the config version.
    """

    __tablename__ = "multi_broker_routes"
    __table_args__ = (
        UniqueConstraint("intent_id", "attempt"),
        Index(None, "broker_name", "decided_at"),
        Index(None, "decided_at"),
        Index(None, "strategy_id", "decided_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    intent_id: Mapped[str] = mapped_column(String(48), nullable=False)
    strategy_id: Mapped[str] = mapped_column(String(64), nullable=False)
    broker_name: Mapped[str] = mapped_column(BrokerCol, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    rule: Mapped[str] = mapped_column(String(100), nullable=False)
    score: Mapped[float | None] = mapped_column()
    estimated_fee: Mapped[Decimal | None] = mapped_column(Money)
    fallback_chain: Mapped[list[Any]] = mapped_column(nullable=False)
    failover_from: Mapped[str | None] = mapped_column(BrokerCol)
    decision: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class Order(Base):
    """Latest state of each order at each broker. ``broker_name`` is NULL only for an intent the
    router rejected before choosing a broker."""

    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("broker_name", "client_order_id", postgresql_nulls_not_distinct=True),
        Index(None, "broker_name", "symbol"),
        Index(None, "broker_name", "status"),
        Index(None, "intent_id"),
        Index(None, "strategy_id", "created_at"),
        Index(None, "symbol", "created_at"),
        Index(None, "broker_name", "decided_at"),
        Index(None, "parent_intent_id"),
        # The month an order counts in for the best-execution report (migration 0012).
        Index("ix_orders_report_month", func.coalesce(column("decided_at"), column("created_at"))),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    intent_id: Mapped[str] = mapped_column(String(48), nullable=False)
    strategy_id: Mapped[str] = mapped_column(String(64), nullable=False)
    broker_name: Mapped[str | None] = mapped_column(BrokerCol)
    client_order_id: Mapped[str] = mapped_column(String(64), nullable=False)
    broker_order_id: Mapped[str | None] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    symbol: Mapped[str] = mapped_column(String(32), nullable=False)
    asset_class: Mapped[str] = mapped_column(String(10), nullable=False)
    side: Mapped[str] = mapped_column(String(4), nullable=False)
    order_type: Mapped[str] = mapped_column(String(12), nullable=False)
    quantity: Mapped[Decimal | None] = mapped_column(Quantity)
    notional: Mapped[Decimal | None] = mapped_column(Money)
    filled_quantity: Mapped[Decimal] = mapped_column(Quantity, nullable=False, server_default="0")
    average_price: Mapped[Decimal | None] = mapped_column(Money)
    fees: Mapped[Decimal] = mapped_column(Money, nullable=False, server_default="0")
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    report_seq: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    # Kept by triggers (migration 0010) from the route and the fills, for quality over time:
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reference_price: Mapped[Decimal | None] = mapped_column(Money)
    first_fill_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The parent order this order is a child of (migration 0011), else NULL.
    parent_intent_id: Mapped[str | None] = mapped_column(String(48))
    # When the broker acknowledged the order (migration 0012): the earliest report showing the
    # broker holds it, else NULL.
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What the best-execution report reads (migration 0014), kept by the aggregator: the route's
    # quote, and the totals and last time of the fills of the order's intent at its broker.
    quote_bid: Mapped[Decimal | None] = mapped_column(Numeric)
    quote_ask: Mapped[Decimal | None] = mapped_column(Numeric)
    quote_mid: Mapped[Decimal | None] = mapped_column(Numeric)
    traded_quantity: Mapped[Decimal | None] = mapped_column(Numeric)
    traded_value: Mapped[Decimal | None] = mapped_column(Numeric)
    traded_fees: Mapped[Decimal | None] = mapped_column(Numeric)
    last_fill_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_over: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))


class ExecutionReportMonth(Base):
    """A closed month's best-execution report as computed, with what it was computed from
    (``workers/readmodel/execution_cache.py``)."""

    __tablename__ = "execution_report_months"

    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    orders: Mapped[int] = mapped_column(BigInteger, nullable=False)
    routes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    orders_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    report: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)


class FillsAwaitingOrder(Base):
    """Fills and failovers stored before their order (migration 0014), per intent and broker:
    the order takes them when it is stored, and the row is deleted."""

    __tablename__ = "fills_awaiting_order"

    intent_id: Mapped[str] = mapped_column(String(48), primary_key=True)
    broker_name: Mapped[str] = mapped_column(BrokerCol, primary_key=True)
    traded_quantity: Mapped[Decimal | None] = mapped_column(Numeric)
    traded_value: Mapped[Decimal | None] = mapped_column(Numeric)
    traded_fees: Mapped[Decimal | None] = mapped_column(Numeric)
    last_fill_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_attempts: Mapped[list[int]] = mapped_column(ARRAY(Integer), nullable=False, server_default="{}")


class ParentOrder(Base):
    """Latest state of each parent order (an intent with an ``execution`` block), from its newest
    ``ParentReport``; its children are ordinary orders whose ``parent_intent_id`` names it."""

    __tablename__ = "parent_orders"
    __table_args__ = (Index(None, "created_at"), Index(None, "strategy_id", "created_at"))

    parent_intent_id: Mapped[str] = mapped_column(String(48), primary_key=True)
    strategy_id: Mapped[str] = mapped_column(String(64), nullable=False)
    symbol: Mapped[str] = mapped_column(String(32), nullable=False)
    side: Mapped[str] = mapped_column(String(4), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    quantity: Mapped[Decimal] = mapped_column(Quantity, nullable=False)
    filled_quantity: Mapped[Decimal] = mapped_column(Quantity, nullable=False, server_default="0")
    average_price: Mapped[Decimal | None] = mapped_column(Money)
    arrival_price: Mapped[Decimal | None] = mapped_column(Money)
    slippage_bps: Mapped[float | None] = mapped_column()
    # The intent's execution block (split, twap, iceberg) as JSON, when a report carried it.
    execution: Mapped[dict[str, Any] | None] = mapped_column()
    # Every child planned or sent so far (ParentReport.children), by slice.
    children: Mapped[list[Any]] = mapped_column(nullable=False, server_default="[]")
    report_seq: Mapped[int] = mapped_column(Integer, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class Position(Base):
    """Latest position per broker and symbol."""

    __tablename__ = "positions"
    __table_args__ = (UniqueConstraint("broker_name", "symbol"), Index(None, "symbol"))

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    broker_name: Mapped[str] = mapped_column(BrokerCol, nullable=False)
    symbol: Mapped[str] = mapped_column(String(32), nullable=False)
    asset_class: Mapped[str] = mapped_column(String(10), nullable=False)
    quantity: Mapped[Decimal] = mapped_column(Quantity, nullable=False)
    average_cost: Mapped[Decimal] = mapped_column(Money, nullable=False)
    market_price: Mapped[Decimal | None] = mapped_column(Money)
    market_value: Mapped[Decimal | None] = mapped_column(Money)
    unrealized_pnl: Mapped[Decimal | None] = mapped_column(Money)
    updated_at: Mapped[datetime] = _now()


class TradeLog(Base):
    """Append-only log of fills."""

    __tablename__ = "trade_logs"
    __table_args__ = (
        Index(None, "broker_name", "symbol"),
        Index(None, "intent_id"),
        Index(None, "executed_at"),
        Index(None, "broker_name", "broker_order_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    fill_id: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    intent_id: Mapped[str] = mapped_column(String(48), nullable=False)
    strategy_id: Mapped[str] = mapped_column(String(64), nullable=False)
    broker_name: Mapped[str] = mapped_column(BrokerCol, nullable=False)
    broker_order_id: Mapped[str] = mapped_column(String(64), nullable=False)
    symbol: Mapped[str] = mapped_column(String(32), nullable=False)
    side: Mapped[str] = mapped_column(String(4), nullable=False)
    quantity: Mapped[Decimal] = mapped_column(Quantity, nullable=False)
    price: Mapped[Decimal] = mapped_column(Money, nullable=False)
    fee: Mapped[Decimal] = mapped_column(Money, nullable=False, server_default="0")
    executed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class HeldPosition(Base):
    """Running totals of ``trade_logs`` per broker and symbol: net filled quantity and the latest
    fill's price. Kept by a trigger on every insert into ``trade_logs`` (migration 0006), so the
    exposure the router needs every few seconds is read from a row per position, not summed
    over every fill ever made."""

    __tablename__ = "held_positions"

    broker_name: Mapped[str] = mapped_column(BrokerCol, primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    quantity: Mapped[Decimal] = mapped_column(Quantity, nullable=False)
    last_price: Mapped[Decimal] = mapped_column(Money, nullable=False)
    last_executed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_fill: Mapped[int] = mapped_column(BigInteger, nullable=False)


class BrokerAccount(Base):
    """Latest account values per broker."""

    __tablename__ = "broker_accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    broker_name: Mapped[str] = mapped_column(BrokerCol, nullable=False, unique=True)
    account_id: Mapped[str] = mapped_column(String(50), nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False, server_default="USD")
    cash: Mapped[Decimal] = mapped_column(Money, nullable=False)
    buying_power: Mapped[Decimal] = mapped_column(Money, nullable=False)
    portfolio_value: Mapped[Decimal] = mapped_column(Money, nullable=False)
    updated_at: Mapped[datetime] = _now()


class InboxMessage(Base):
    """Ids of bus messages already applied; written in the same transaction as their effects,
    so a redelivered message changes nothing."""

    __tablename__ = "inbox"
    __table_args__ = (Index("ix_inbox_received_at", "received_at"),)

    message_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), nullable=False)
    received_at: Mapped[datetime] = _now()


class DeadLetterReplay(Base):
    """Every dead letter `mbx dlq replay` republished: which one, where to, under what id."""

    __tablename__ = "dlq_replays"
    __table_args__ = (Index(None, "letter_id"), Index(None, "intent_id"))

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    letter_id: Mapped[str] = mapped_column(String(200), nullable=False)
    stage: Mapped[str] = mapped_column(String(20), nullable=False)
    original_subject: Mapped[str] = mapped_column(String(255), nullable=False)
    new_message_id: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    intent_id: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str] = mapped_column(Text, nullable=False)
    replayed_by: Mapped[str] = mapped_column(String(100), nullable=False)
    replayed_at: Mapped[datetime] = _now()


class ConfigChange(Base):
    """Every change to the live trading config made with `mbx config set`: who, what, which
    KV revision, and the whole config as it became."""

    __tablename__ = "config_changes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)
    changed_by: Mapped[str] = mapped_column(String(100), nullable=False)
    summary: Mapped[str] = mapped_column(Text, nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    changed_at: Mapped[datetime] = _now()


class FailoverRecord(Base):
    """Append-only log of failed attempts that were handed to the next broker."""

    __tablename__ = "failover_events"
    __table_args__ = (
        UniqueConstraint("intent_id", "attempt"),
        Index(None, "failed_broker", "occurred_at"),
        Index(None, "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    intent_id: Mapped[str] = mapped_column(String(48), nullable=False)
    strategy_id: Mapped[str] = mapped_column(String(64), nullable=False)
    failed_broker: Mapped[str] = mapped_column(BrokerCol, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    reason_code: Mapped[str] = mapped_column(String(50), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class ApprovalRecord(Base):
    """Append-only: every step of every order held for an operator's approval (pending, each
    approval, denied, expired, released), with who, when and the note (migration 0013)."""

    __tablename__ = "approvals"
    __table_args__ = (
        UniqueConstraint("intent_id", "step_no"),
        Index(None, "at"),
        Index(None, "step", "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    intent_id: Mapped[str] = mapped_column(String(48), nullable=False)
    step_no: Mapped[int] = mapped_column(Integer, nullable=False)
    step: Mapped[str] = mapped_column(String(10), nullable=False)
    strategy_id: Mapped[str] = mapped_column(String(64), nullable=False)
    rule: Mapped[str] = mapped_column(String(100), nullable=False)
    operator: Mapped[str] = mapped_column(String(100), nullable=False, server_default="")
    note: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    approvers_needed: Mapped[int] = mapped_column(Integer, nullable=False)
    approvals_given: Mapped[int] = mapped_column(Integer, nullable=False)
    symbol: Mapped[str] = mapped_column(String(32), nullable=False)
    side: Mapped[str] = mapped_column(String(4), nullable=False)
    quantity: Mapped[Decimal | None] = mapped_column(Quantity)
    notional: Mapped[Decimal | None] = mapped_column(Money)
    estimated_notional: Mapped[Decimal | None] = mapped_column(Money)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_at: Mapped[datetime] = _now()
