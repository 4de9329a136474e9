"""The executor's I/O edge: decode a route, place the order, publish reports and fills, ack."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
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
from workers.bus import delivery_count, publish
from workers.executor.reports import failover_event, fill_message, report
from workers.failpoints import failpoint
from workers.runtime import PoisonMessage, Worker, parse
from workers.venues.base import (
    Venue,
    VenueAmbiguous,
    VenueDuplicate,
    VenueOrder,
    VenueRejected,
    VenueUnavailable,
)

if TYPE_CHECKING:
    from nats.aio.msg import Msg


LOOKUP_MARGIN = timedelta(seconds=5)
LISTING_SETTLE = timedelta(seconds=5)


class OutcomeUnknown(Exception):
    """Whether an earlier attempt placed the order is not known yet: retry later (transient)."""


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
        self._working: set[str] = set()

    async def on_route(self, msg: Msg) -> None:
        await self.worker.deliver(DeadLetterStage.EXECUTOR, self.spec, msg, self.execute)

    async def execute(self, msg: Msg) -> str:
        decision = parse(RouteDecision, msg.data)
        structlog.contextvars.bind_contextvars(intent_id=decision.intent_id, broker=str(decision.broker))
        if decision.broker != self.venue.broker:
            raise PoisonMessage(f"route for {decision.broker} reached the {self.venue.broker} executor")
        if decision.intent_id in self._working:
            # Another delivery of this intent is in hand here: let it finish, then look again.
            raise OutcomeUnknown(f"intent {decision.intent_id} is already being placed by this executor")
        self._working.add(decision.intent_id)
        try:
            return await self._execute(msg, decision)
        finally:
            self._working.discard(decision.intent_id)

    async def _execute(self, msg: Msg, decision: RouteDecision) -> str:
        client_order_id = decision.intent.intent_id
        # Orders placed for this decision cannot predate it; the margin covers clock skew.
        since = decision.created_at - LOOKUP_MARGIN
        order = None
        if delivery_count(msg) > 1:
            # An earlier delivery may have placed the order before a crash: never place again
            # before finding out (brokers without client order ids would take it twice).
            order = await self.venue.locate(decision.intent, client_order_id, since)
            if order is None and not self.venue.capabilities.has_client_order_id:
                self._wait_for_listing(decision)
        if order is None:
            failpoint("before_place")
            try:
                order = await self._timed_place(decision, client_order_id)
            except VenueRejected as exc:
                return await self._rejected(decision, exc)
            except (VenueDuplicate, VenueAmbiguous):
                # The order may exist (a lost reply) or does (a duplicate id): look it up. If it
                # is not there the error propagates, the route is redelivered, and the next
                # delivery looks again before placing.
                order = await self.venue.locate(decision.intent, client_order_id, since)
                if order is None:
                    raise
        failpoint("after_place")
        await self._emit_order(decision, order)
        failpoint("after_report")  # reported, not yet acked
        return str(order.status)

    @staticmethod
    def _wait_for_listing(decision: RouteDecision) -> None:
        """A broker without client order ids cannot refuse a duplicate, and its order list lags
        behind. Until the decision is ``LISTING_SETTLE`` old, not finding the order proves
        nothing: retry later instead of placing it a second time."""
        age = datetime.now(UTC) - decision.created_at
        if age < LISTING_SETTLE:
            raise OutcomeUnknown(
                f"no {decision.broker} order matches yet ({age.total_seconds():.1f}s after routing); "
                "looking again before any resubmission"
            )

    async def _rejected(self, decision: RouteDecision, exc: VenueRejected) -> str:
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
