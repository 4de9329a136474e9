"""The router's I/O edge: decode an intent or a failover, decide, publish the outcome, ack."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

import structlog

from contracts import (
    DeadLetterStage,
    ExecutionReport,
    FailoverEvent,
    OrderIntent,
    OrderStatus,
    RouteDecision,
)
from workers.bus import publish
from workers.router.rules import MarketView, Rejection, route
from workers.runtime import PoisonMessage, Worker, parse
from workers.settings import MbxConfig

if TYPE_CHECKING:
    from nats.aio.msg import Msg


class QuoteSource(Protocol):
    """Where the router gets a reference price to estimate fees and order size."""

    def mid(self, symbol: str) -> Decimal: ...


class RouterHandlers:
    def __init__(self, worker: Worker, config: MbxConfig, quotes: QuoteSource) -> None:
        self.worker = worker
        self.config = config
        self.quotes = quotes

    def market(self, symbol: str) -> MarketView:
        return MarketView(reference_price=self.quotes.mid(symbol))

    async def on_intent(self, msg: Msg) -> None:
        spec = self.worker.subjects.router_consumer()
        await self.worker.deliver(DeadLetterStage.ROUTER, spec, msg, self.route_intent)

    async def on_failover(self, msg: Msg) -> None:
        spec = self.worker.subjects.router_failover_consumer()
        await self.worker.deliver(DeadLetterStage.ROUTER, spec, msg, self.reroute)

    async def route_intent(self, msg: Msg) -> str:
        intent = parse(OrderIntent, msg.data)
        structlog.contextvars.bind_contextvars(intent_id=intent.intent_id)
        subject_strategy = msg.subject.rsplit(".", 1)[-1]
        if subject_strategy != intent.strategy_id:
            raise PoisonMessage(
                f"subject strategy {subject_strategy!r} does not match payload strategy_id {intent.strategy_id!r}"
            )
        return await self._publish(intent, route(intent, self.config, market=self.market(intent.symbol)), 1)

    async def reroute(self, msg: Msg) -> str:
        """The next attempt after a failure, skipping every broker that already failed."""
        event = parse(FailoverEvent, msg.data)
        structlog.contextvars.bind_contextvars(intent_id=event.intent_id)
        intent = event.decision.intent
        failed = [*event.decision.failed_brokers, event.failed_broker]
        attempt = event.attempt + 1
        outcome = route(intent, self.config, attempt=attempt, market=self.market(intent.symbol), failed=failed)
        return await self._publish(intent, outcome, attempt)

    async def _publish(self, intent: OrderIntent, outcome: RouteDecision | Rejection, attempt: int) -> str:
        subjects = self.worker.subjects
        if isinstance(outcome, RouteDecision):
            structlog.contextvars.bind_contextvars(broker=str(outcome.broker))
            await publish(
                self.worker.js,
                subjects.route(outcome.broker),
                outcome,
                intent_id=intent.intent_id,
                strategy_id=intent.strategy_id,
            )
            return f"routed:{outcome.broker}"
        report = rejection_report(intent, outcome, attempt)
        await publish(
            self.worker.js,
            subjects.execution(None, OrderStatus.REJECTED),
            report,
            intent_id=intent.intent_id,
            strategy_id=intent.strategy_id,
        )
        return f"rejected:{outcome.reason_code}"


def rejection_report(intent: OrderIntent, rejection: Rejection, attempt: int = 1) -> ExecutionReport:
    details = "; ".join(f"{e.broker}: {e.reason}" for e in rejection.excluded)
    return ExecutionReport(
        message_id=f"exec-{intent.intent_id}-router-rejected-{attempt}",
        correlation_id=intent.intent_id,
        intent_id=intent.intent_id,
        strategy_id=intent.strategy_id,
        broker=None,
        status=OrderStatus.REJECTED,
        attempt=attempt,
        client_order_id=intent.intent_id,
        symbol=intent.symbol,
        asset_class=intent.asset_class,
        side=intent.side,
        order_type=intent.order_type,
        quantity=intent.quantity,
        notional=intent.notional,
        reason_code=rejection.reason_code,
        reason=f"{rejection.reason} ({details})",
        final=True,
    )
