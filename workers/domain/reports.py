"""Build execution reports and fills from a venue's view of an order. Pure.

Message ids are derived from the intent, broker, attempt and report sequence, so a redelivered
route republishes the very same ids and JetStream drops the copies.
"""

from __future__ import annotations

from decimal import Decimal

from contracts import (
    BrokerName,
    CancelReject,
    CancelRequest,
    ExecutionReport,
    FailoverEvent,
    Fill,
    IntentRefused,
    OrderIntent,
    OrderStatus,
    RouteDecision,
)
from workers.domain.venue import VenueFill, VenueOrder


def report(
    decision: RouteDecision,
    status: OrderStatus,
    seq: int,
    order: VenueOrder | None = None,
    *,
    reason_code: str = "",
    reason: str = "",
    final: bool | None = None,
) -> ExecutionReport:
    intent = decision.intent
    return ExecutionReport(
        message_id=f"exec-{intent.intent_id}-{decision.broker}-{decision.attempt}-{seq}",
        correlation_id=intent.intent_id,
        intent_id=intent.intent_id,
        strategy_id=intent.strategy_id,
        broker=decision.broker,
        status=status,
        attempt=decision.attempt,
        report_seq=seq,
        client_order_id=intent.intent_id,
        broker_order_id=order.broker_order_id if order else "",
        symbol=intent.symbol,
        asset_class=intent.asset_class,
        side=intent.side,
        order_type=intent.order_type,
        quantity=order.quantity if order else intent.quantity,
        notional=intent.notional,
        filled_quantity=order.filled_quantity if order else Decimal(0),
        leaves_quantity=order.leaves_quantity if order else (intent.quantity or Decimal(0)),
        average_price=order.average_price if order else None,
        fees=order.fees if order else Decimal(0),
        reason_code=reason_code,
        reason=reason,
        first_fill_at=min((f.executed_at for f in order.fills), default=None) if order else None,
        final=status.is_terminal if final is None else final,
    )


def fill_message(decision: RouteDecision, order: VenueOrder, fill: VenueFill) -> Fill:
    intent = decision.intent
    return Fill(
        message_id=f"fill-{decision.broker}-{fill.fill_id}",
        correlation_id=intent.intent_id,
        fill_id=f"{decision.broker}:{fill.fill_id}",
        intent_id=intent.intent_id,
        strategy_id=intent.strategy_id,
        broker=decision.broker,
        broker_order_id=order.broker_order_id,
        symbol=intent.symbol,
        asset_class=intent.asset_class,
        side=intent.side,
        quantity=fill.quantity,
        price=fill.price,
        fee=fill.fee,
        executed_at=fill.executed_at,
    )


def failover_event(decision: RouteDecision, reason_code: str, reason: str) -> FailoverEvent:
    return FailoverEvent(
        message_id=f"failover-{decision.intent_id}-{decision.attempt}",
        correlation_id=decision.intent_id,
        intent_id=decision.intent_id,
        strategy_id=decision.strategy_id,
        failed_broker=decision.broker,
        attempt=decision.attempt,
        reason_code=reason_code,
        reason=reason,
        decision=decision,
    )


def cancel_reject(
    request: CancelRequest, broker: BrokerName | None, code: str, reason: str, status: OrderStatus | None = None
) -> CancelReject:
    """The answer to a cancel that cannot be carried out; its id derives from the request's, so
    a redelivered request answers once."""
    return CancelReject(
        message_id=f"cancel-reject-{request.message_id}",
        correlation_id=request.intent_id,
        intent_id=request.intent_id,
        strategy_id=request.strategy_id,
        broker=broker,
        reason_code=code,
        reason=reason,
        order_status=status,
    )


def intent_refused(intent: OrderIntent, sender: str, reason: str) -> IntentRefused:
    """The answer to an intent refused because of who sent it; its id derives from the intent's
    message and the sender, so a redelivery answers once (and one sender cannot take another's id)."""
    return IntentRefused(
        message_id=f"refused-{sender}-{intent.message_id}",
        correlation_id=intent.intent_id,
        intent_id=intent.intent_id,
        strategy_id=sender,
        claimed_strategy_id=intent.strategy_id,
        reason_code="wrong_strategy",
        reason=reason,
    )
