"""The executor's I/O edge: decode a route, place the order, publish reports and fills, ack."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from contracts import (
    ConsumerSpec,
    DeadLetterStage,
    ExecutionReport,
    FailoverEvent,
    Fill,
    OrderStatus,
    RouteDecision,
)
from workers.bus import publish
from workers.executor.reports import failover_event, fill_message, report
from workers.runtime import PoisonMessage, Worker, parse
from workers.venues.base import Venue, VenueAmbiguous, VenueOrder, VenueRejected, VenueUnavailable

if TYPE_CHECKING:
    from nats.aio.msg import Msg


class VenueStats:
    """Exponentially weighted latency and error rate of calls to the broker."""

    ALPHA = 0.2

    def __init__(self) -> None:
        self.latency_ms = 0.0
        self.error_rate = 0.0
        self._seen = False

    def record(self, latency_ms: float, failed: bool) -> None:
        if not self._seen:
            self.latency_ms, self._seen = latency_ms, True
        else:
            self.latency_ms += self.ALPHA * (latency_ms - self.latency_ms)
        self.error_rate += self.ALPHA * ((1.0 if failed else 0.0) - self.error_rate)


class ExecutorHandlers:
    def __init__(self, worker: Worker, spec: ConsumerSpec, venue: Venue) -> None:
        self.worker = worker
        self.spec = spec
        self.venue = venue
        self.stats = VenueStats()

    async def on_route(self, msg: Msg) -> None:
        await self.worker.deliver(DeadLetterStage.EXECUTOR, self.spec, msg, self.execute)

    async def execute(self, msg: Msg) -> str:
        decision = parse(RouteDecision, msg.data)
        structlog.contextvars.bind_contextvars(intent_id=decision.intent_id, broker=str(decision.broker))
        if decision.broker != self.venue.broker:
            raise PoisonMessage(f"route for {decision.broker} reached the {self.venue.broker} executor")
        client_order_id = decision.intent.intent_id
        try:
            order = await self._timed_place(decision, client_order_id)
        except VenueRejected as exc:
            # An order-specific rejection would fail anywhere: it ends the intent. Any other
            # rejection hands the intent back to the router for the next broker in the chain.
            final = exc.order_specific
            rejected = report(
                decision, OrderStatus.REJECTED, 1, reason_code=exc.reason_code, reason=exc.reason, final=final
            )
            await self._emit(decision, rejected)
            if not final:
                await self._emit(decision, failover_event(decision, exc.reason_code, exc.reason))
                return f"failover:{exc.reason_code}"
            return f"rejected:{exc.reason_code}"
        except VenueAmbiguous:
            # The order may exist at the broker: find it before anything else happens. If it is
            # not there, the error propagates and the route is redelivered (the same client
            # order id makes the retry safe).
            found = await self.venue.find_order(client_order_id)
            if found is None:
                raise
            order = found
        await self._emit_order(decision, order)
        return str(order.status)

    async def _timed_place(self, decision: RouteDecision, client_order_id: str) -> VenueOrder:
        """Place the order, feeding latency and error rate into the heartbeat's statistics."""
        started = time.perf_counter()
        failed = False
        try:
            return await self.venue.place_order(decision.intent, client_order_id)
        except (VenueUnavailable, VenueAmbiguous):
            failed = True
            raise
        finally:
            self.stats.record((time.perf_counter() - started) * 1000, failed)

    async def _emit_order(self, decision: RouteDecision, order: VenueOrder) -> None:
        await self._emit(decision, report(decision, OrderStatus.ACCEPTED, 1, order, final=False))
        for fill in order.fills:
            await self._emit(decision, fill_message(decision, order, fill))
        if order.status is not OrderStatus.ACCEPTED:
            await self._emit(decision, report(decision, order.status, 2, order))

    async def _emit(self, decision: RouteDecision, message: ExecutionReport | Fill | FailoverEvent) -> None:
        subjects = self.worker.subjects
        if isinstance(message, Fill):
            subject = subjects.fill(message.broker, message.symbol)
        elif isinstance(message, FailoverEvent):
            subject = subjects.failover(message.failed_broker)
        else:
            subject = subjects.execution(message.broker, message.status)
        await publish(self.worker.js, subject, message, intent_id=decision.intent_id, strategy_id=decision.strategy_id)
