"""The router's I/O edge: decode an intent or a failover, decide, publish the outcome, ack."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import structlog
from nats.js.errors import NotFoundError

from contracts import (
    BrokerName,
    CancelRequest,
    DeadLetterStage,
    ExecutionReport,
    FailoverEvent,
    Message,
    OrderIntent,
    RouteDecision,
    RoutePreview,
)
from workers.domain.quotes import PriceCheck, QuoteSource, assess
from workers.domain.reports import cancel_reject, intent_refused
from workers.platform import metrics, telemetry
from workers.platform.bus import delivery_count, is_replay, publish
from workers.platform.order_ledger import OrderLedger
from workers.platform.runtime import PoisonMessage, RetryLater, Worker, parse
from workers.router.approvals import NOT_YOURS, ApprovalDesk
from workers.router.journal import DecisionJournal, Published
from workers.router.parent_orders import ParentOrders
from workers.router.plan import BROKERS, plan_for
from workers.router.rules import Rejection, queue_waits, route
from workers.router.state import RouterState

if TYPE_CHECKING:
    from nats.aio.msg import Msg

STARTING_POLL_S = 0.05
"""How often a held intent looks whether the brokers it waits for have spoken."""
HOLD_SLACK_S = 1.0
"""Seconds a held intent waits past the registry's own bounds before it is decided regardless
(the registry ends *starting* and *unsure* by itself; this only guards against a clock jump)."""
CANCEL_RETRY_S = 1.0
"""Seconds before a cancel for an intent not routed yet is looked at again."""


class RouterHandlers:
    def __init__(self, worker: Worker, state: RouterState, quotes: QuoteSource) -> None:
        self.worker = worker
        self.state = state
        self.quotes = quotes
        self.intent_spec = worker.settings.topology.router_consumer()
        self.failover_spec = worker.settings.topology.router_failover_consumer()
        self.cancel_spec = worker.settings.topology.router_cancel_consumer()
        self.ledger = OrderLedger(lambda: worker.js, worker.settings.topology.order_ledger_bucket)
        self.journal = DecisionJournal(lambda: worker.js, worker.settings.topology.decisions_bucket)
        self.parents = ParentOrders(worker, state, self.journal, self.price)
        self.approvals = ApprovalDesk(worker, state, self.price, self.route_released, self.reject_released)

    async def decide(
        self, intent: OrderIntent, attempt: int = 1, failed: Sequence[BrokerName] = ()
    ) -> tuple[RouteDecision | Rejection, Decimal | None]:
        """Route ``intent`` at the current quote; returns the outcome and the price it used."""
        with telemetry.span("decide", intent_id=intent.intent_id, attempt=attempt):
            started = time.perf_counter()
            check = await self.price(intent.symbol)
            outcome = route(
                intent,
                self.state.config,
                attempt=attempt,
                failed=failed,
                market=self.state.market(check.price, check),
                risk=self.state.risk_view(),
                config_version=self.state.version,
            )
            metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
        return outcome, check.price

    async def price(self, symbol: str) -> PriceCheck:
        """The quote source's latest quote, judged by age; an unreachable source counts as no quote."""
        error = ""
        try:
            quote = await self.quotes.quote(symbol)
        except Exception as exc:  # noqa: BLE001  (any failure of the source: price without it, say why)
            quote, error = None, f"{self.quotes.name}: {type(exc).__name__}: {exc}"
        max_age = self.state.config.market_data.max_age_s
        return assess(symbol, quote, max_age, datetime.now(UTC), error)

    async def preview(self, msg: Msg) -> None:
        """Reply with the full decision for an intent; nothing is published or placed."""
        try:
            intent = parse(OrderIntent, msg.data)
        except PoisonMessage as exc:
            reply = RoutePreview(error=str(exc))
        else:
            outcome, _ = await self.decide(intent)
            if isinstance(outcome, RouteDecision):
                reply = RoutePreview(correlation_id=intent.intent_id, decision=outcome)
            else:
                reply = RoutePreview(
                    correlation_id=intent.intent_id,
                    rejection_code=outcome.reason_code,
                    rejection_reason=outcome.reason,
                    excluded=outcome.excluded,
                )
        if msg.reply:
            await msg.respond(reply.model_dump_json().encode())

    def scarcest_first(self, msgs: list[Msg]) -> list[Msg]:
        """A fetched batch of intents (a burst, when there are several) in the order to decide
        them: those with the least broker capacity able to take them first. Each decision sees
        the queues the earlier ones made, so an order many brokers can take leaves a broker that
        few orders have an alternative to (fractional equities at Alpaca) when that broker's queue
        has grown, instead of taking its place before the scarcer orders are seen. Unreadable
        intents go first (their handler dead-letters them at once)."""
        if len(msgs) < 2:
            return msgs
        plan = plan_for(self.state.config)

        def capacity(msg: Msg) -> float:
            try:
                return plan.capacity(plan.shape(parse(OrderIntent, msg.data)))
            except PoisonMessage:
                return -1.0

        return sorted(msgs, key=capacity)

    async def on_intent(self, msg: Msg) -> None:
        await self.worker.deliver(DeadLetterStage.ROUTER, self.intent_spec, msg, self.route_intent)

    async def on_failover(self, msg: Msg) -> None:
        await self.worker.deliver(DeadLetterStage.ROUTER, self.failover_spec, msg, self.reroute)

    async def on_cancel(self, msg: Msg) -> None:
        await self.worker.deliver(DeadLetterStage.ROUTER, self.cancel_spec, msg, self.forward_cancel)

    async def forward_cancel(self, msg: Msg) -> str:
        """Send a cancel request to the broker holding the order, or refuse it to its sender: a
        body naming another strategy than its subject, an order of another strategy, an unknown
        order."""
        request = parse(CancelRequest, msg.data)
        structlog.contextvars.bind_contextvars(intent_id=request.intent_id)
        sender, refusal = self.sender(msg, request.strategy_id)
        if refusal is not None:
            return await self._refuse_cancel(request, sender, "wrong_strategy", refusal)
        entry = await self.ledger.get(request.intent_id)
        # The ledger keeps the route while the order works; routed and not recorded by its
        # executor yet, the journal knows whose it is. A finished order (no route kept) is
        # answered too_late_to_cancel by its executor, whoever asks.
        first = await self.journal.first(request.intent_id) if entry is None else None
        parent = self.parents.forwarded_parent(first)
        if parent is not None:
            return await self._forward_parent_cancel(request, sender, parent)
        decision = entry.decision if entry is not None else self._route_in(first)
        if decision is not None and decision.strategy_id != sender:
            return await self._not_yours(request, sender)
        broker = entry.broker if entry is not None else decision.broker if decision is not None else None
        if broker is None:
            held = await self.approvals.cancel(request, sender)
            if held == NOT_YOURS:
                return await self._not_yours(request, sender)
            if held is not None:
                return held
            if delivery_count(msg) < self.cancel_spec.give_up_after and await self._intents_in_flight():
                # The intent may still be queued behind others: look again before answering.
                raise RetryLater(f"intent {request.intent_id} is not routed yet", CANCEL_RETRY_S)
            why = "no broker holds an order for this intent (it was never routed)"
            return await self._refuse_cancel(request, sender, "unknown_order", why)
        await publish(
            self.worker.js,
            self.worker.subjects.cancel_route(broker),
            request,
            intent_id=request.intent_id,
            strategy_id=request.strategy_id,
        )
        return f"cancel_forwarded:{broker}"

    def sender(self, msg: Msg, claimed: str) -> tuple[str, str | None]:
        """The strategy that sent ``msg``: its subject's (under ``--secure``, its NATS user's),
        and why the message is refused when its body claims another strategy. Intents and
        cancels (and whatever a strategy sends next) take this one check."""
        sender = self.worker.subjects.sender(msg.subject)
        if sender is None:
            raise PoisonMessage(f"{msg.subject} is not a strategy's intent or cancel subject")
        if sender == claimed:
            return sender, None
        return sender, (
            f"strategy_id {claimed!r} does not match strategy {sender!r} of the subject {msg.subject}: "
            "a strategy sends only as itself"
        )

    async def _not_yours(self, request: CancelRequest, sender: str) -> str:
        why = f"intent {request.intent_id} belongs to another strategy; a strategy cancels only its own"
        return await self._refuse_cancel(request, sender, "not_your_order", why)

    async def _refuse_cancel(self, request: CancelRequest, sender: str, code: str, why: str) -> str:
        """Answer a cancel that is not carried out, on the sender's own results."""
        own = request if request.strategy_id == sender else request.model_copy(update={"strategy_id": sender})
        await publish(
            self.worker.js,
            self.worker.subjects.cancel_reject(None, sender),
            cancel_reject(own, None, code, why),
            intent_id=request.intent_id,
            strategy_id=sender,
        )
        return f"cancel_rejected:{code}"

    async def _intents_in_flight(self) -> bool:
        """Whether any intent is queued for the router or in a router's hands."""
        try:
            info = await self.worker.js.consumer_info(self.intent_spec.stream, self.intent_spec.durable)
        except Exception:  # noqa: BLE001  (unknown: assume there may be)
            return True
        return bool(info.num_pending or info.num_ack_pending)

    def _route_in(self, first: Published | None) -> RouteDecision | None:
        """The intent's first route, from the journal: its order may exist before the ledger
        shows it (the executor placed it and has not recorded it yet)."""
        if first is None or self.worker.subjects.kind(first.subject) != "routes":
            return None
        return parse(RouteDecision, first.payload)

    async def _forward_parent_cancel(self, request: CancelRequest, sender: str, parent: OrderIntent) -> str:
        """A parent's cancel goes to the parent-order worker, which cancels its unsent slices and
        every working child; another strategy's parent is refused like any order of another's."""
        if parent.strategy_id != sender:
            return await self._not_yours(request, sender)
        await self.parents.forward_cancel(request)
        return "cancel_forwarded:parent"

    async def route_intent(self, msg: Msg) -> str:
        intent = parse(OrderIntent, msg.data)
        structlog.contextvars.bind_contextvars(intent_id=intent.intent_id)
        sender, refusal = self.sender(msg, intent.strategy_id)
        if refusal is not None:
            # Told to the sender (an IntentRefused, which the audit store records against no
            # order: a rejected report would carry an intent id the sender chose, and would be
            # recorded on that intent), then dead-lettered for operators.
            await publish(
                self.worker.js,
                self.worker.subjects.refusal(sender),
                intent_refused(intent, sender, refusal),
                intent_id=intent.intent_id,
                strategy_id=sender,
            )
            raise PoisonMessage(refusal)
        if is_replay(msg) and await self.ledger.get(intent.intent_id) is not None:
            # A replayed intent that already reached a broker: its order exists (or existed);
            # routing it again could place it twice.
            return "replay:already_routed"
        held = await self.approvals.hold(intent)
        if held is not None:
            return held  # an operator decides; the approval desk routes or rejects it then
        return await self.route_released(intent)

    async def route_released(self, intent: OrderIntent) -> str:
        """Route an intent no approval holds (any more): a parent order goes to the parent-order
        worker, which sends its children here as ordinary intents, each routed (kill switches and
        limits included) on its own; any other is decided at the quote and state of now."""
        if intent.execution is not None:
            return await self.parents.forward(intent)
        await self.hold_for_brokers(intent)
        outcome, price = await self.decide(intent)
        return await self._publish_counted(intent, outcome, 1, price)

    async def reject_released(self, intent: OrderIntent, rejection: Rejection) -> str:
        """End a denied or expired hold: the intent's rejected report, through the journal."""
        return await self._publish_counted(intent, rejection, 1, None)

    async def reroute(self, msg: Msg) -> str:
        """The next attempt after a failure, skipping every broker that already failed."""
        event = parse(FailoverEvent, msg.data)
        structlog.contextvars.bind_contextvars(intent_id=event.intent_id)
        intent = event.decision.intent
        failed = [*event.decision.failed_brokers, event.failed_broker]
        attempt = event.attempt + 1
        await self.hold_for_brokers(intent, failed)
        outcome, price = await self.decide(intent, attempt, failed)
        result = await self._publish_counted(intent, outcome, attempt, price)
        if not result.startswith("replay:"):
            metrics.FAILOVERS.labels(str(event.failed_broker)).inc()
        return result

    async def _publish_counted(
        self, intent: OrderIntent, outcome: RouteDecision | Rejection, attempt: int, price: Decimal | None
    ) -> str:
        """``_publish``, with a route counted in its broker's queue from the moment it is decided
        (decisions of one batch run together: the next intent already sees it) until a reading
        of the executors' consumer holds it (``Backlog.stored``: by its stream sequence). Its
        exposure, cash and position count from that moment too, until a snapshot includes it."""
        if not isinstance(outcome, RouteDecision):
            result, _ = await self._publish(intent, outcome, attempt, price)
            return result
        backlog = self.state.backlog
        backlog.routed(outcome.broker)
        flight = self.state.record(outcome, price if price is not None else intent.limit_price)
        try:
            result, seq = await self._publish(intent, outcome, attempt, price)
        except BaseException:
            backlog.abandoned(outcome.broker)
            self.state.withdraw(flight)
            raise
        if result.startswith("replay:"):
            self.state.withdraw(flight)  # the earlier decision was counted when it was made
        backlog.stored(outcome.broker, seq)
        return result

    async def read_backlog(self) -> None:
        """Read every enabled broker's executor queue (routes stored and not yet acked)."""
        topology = self.worker.settings.topology
        routes = await self.worker.js.stream_info(self.worker.subjects.stream_name("ROUTES"))
        began = self.state.backlog.begin_reading(routes.state.last_seq)
        for broker in self.state.config.enabled_brokers():
            spec = topology.executor_consumer(broker)
            try:
                info = await self.worker.js.consumer_info(spec.stream, spec.durable)
            except NotFoundError:
                continue  # no executor of that broker ever started: nothing queued for it yet
            self.state.backlog.observe(
                broker, info.num_pending + info.num_ack_pending, began, info.ack_floor.consumer_seq
            )
        waits = queue_waits(plan_for(self.state.config), self.state.market(None))
        for broker in self.state.config.enabled_brokers():
            metrics.QUEUE_WAIT.labels(str(broker)).set(waits.get(broker, 0.0))

    async def hold_for_brokers(self, intent: OrderIntent, failed: Sequence[BrokerName] = ()) -> None:
        """Hold the intent while a broker that could take it is *starting* (not heard from since
        the router started or NATS came back) or *unsure* (its heartbeat is stale, but the bus may
        be why: ``registry.judge``), until each speaks or its bound runs out
        (``routing.startup_grace_s``, ``routing.hold_when_unsure_s``): routing before then would
        send the intent away from a broker that is probably fine, or reject it. A broker that
        already ``failed`` this intent is not waited for."""
        registry = self.state.registry
        if not registry.awaited():
            return  # every broker has spoken: nothing to wait for (the usual case, at no cost)
        routing = self.state.config.routing
        capability = plan_for(self.state.config).shape(intent).capability
        capable = frozenset(b for b, out in zip(BROKERS, capability, strict=True) if out is None) - set(failed)
        bound = max(routing.startup_grace_s, routing.heartbeat_timeout_s + routing.hold_when_unsure_s)
        deadline = time.monotonic() + bound + HOLD_SLACK_S
        # Polled: the registry is pure (no event loop), and this only runs while a broker is
        # starting or unsure.
        while capable & registry.awaited() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(STARTING_POLL_S)

    async def _publish(
        self, intent: OrderIntent, outcome: RouteDecision | Rejection, attempt: int, price: Decimal | None
    ) -> tuple[str, int]:
        """Journal the outcome, then publish it; what happened, and the stream sequence it is
        stored at. If this intent and attempt was decided before (a redelivery the server no
        longer knew was handled), the earlier outcome is published again instead, unchanged: an
        intent is never decided twice."""
        subjects = self.worker.subjects
        message: Message
        if isinstance(outcome, RouteDecision):
            subject, message = subjects.route(outcome.broker, intent.strategy_id), outcome
            result = f"routed:{outcome.broker}"
        else:
            report = rejection_report(intent, outcome, attempt)
            subject, message = subjects.execution(None, outcome.status, intent.strategy_id), report
            result = f"{outcome.status}:{outcome.reason_code}"
        ours = Published.of(subject, message, intent.intent_id, intent.strategy_id)
        standing = await self.journal.claim(intent.intent_id, attempt, ours)
        seq = (await self.journal.publish(standing)).seq
        if standing is not ours:
            return "replay:republished_earlier_decision", seq
        if isinstance(outcome, RouteDecision):
            structlog.contextvars.bind_contextvars(broker=str(outcome.broker))
            metrics.INTENTS_ROUTED.labels(str(outcome.broker), outcome.rule).inc()
        else:
            metrics.INTENTS_REJECTED.labels(outcome.reason_code).inc()
        return result, seq


def rejection_report(intent: OrderIntent, rejection: Rejection, attempt: int = 1) -> ExecutionReport:
    details = "; ".join(f"{e.broker}: {e.reason}" for e in rejection.excluded)
    reason = f"{rejection.reason} ({details})" if details else rejection.reason
    return ExecutionReport(
        message_id=f"exec-{intent.intent_id}-router-{rejection.status}-{attempt}",
        correlation_id=intent.intent_id,
        intent_id=intent.intent_id,
        strategy_id=intent.strategy_id,
        broker=None,
        status=rejection.status,
        attempt=attempt,
        client_order_id=intent.intent_id,
        symbol=intent.symbol,
        asset_class=intent.asset_class,
        side=intent.side,
        order_type=intent.order_type,
        quantity=intent.quantity,
        notional=intent.notional,
        reason_code=rejection.reason_code,
        reason=reason,
        final=True,
    )
