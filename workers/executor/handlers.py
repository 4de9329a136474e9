"""The executor's I/O edge: decode a route, place the order, publish reports and fills, ack."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

import structlog

from contracts import (
    CancelRequest,
    DeadLetterStage,
    ExecutionReport,
    FailoverEvent,
    Fill,
    OrderStatus,
    RouteDecision,
)
from workers.domain.config import RoutingConfig
from workers.domain.ledger import LedgerEntry
from workers.domain.order_state import check_move, is_behind
from workers.domain.reports import cancel_reject, failover_event, fill_message, report
from workers.domain.venue import (
    Venue,
    VenueAmbiguous,
    VenueDuplicate,
    VenueError,
    VenueOrder,
    VenueRejected,
    VenueUnavailable,
)
from workers.executor.budget import DailyOrderBudget, DailyOrdersSpent, RateBudget
from workers.executor.same_shape import SameShapeGuard, ShapeBusy
from workers.platform import metrics, telemetry
from workers.platform.bus import delivery_count, is_replay, publish, publish_checked, stored_at
from workers.platform.failpoints import failpoint
from workers.platform.order_ledger import OrderLedger
from workers.platform.runtime import PoisonMessage, RetryLater, StillPending, Worker, parse
from workers.platform.topology import ConsumerSpec

if TYPE_CHECKING:
    from nats.aio.msg import Msg


log = structlog.get_logger("mbx.executor")
T = TypeVar("T")

CANCEL_WAIT = timedelta(minutes=5)
"""How long a cancel waits for the order it cancels to be recorded here before it is refused."""
LOOKUP_MARGIN = timedelta(seconds=5)
EARLY_UPDATE_TTL = timedelta(minutes=5)
"""How long news of an order not recorded yet is kept for when it is."""
EARLY_UPDATES_KEPT = 10_000
"""Most orders whose early news is kept at once."""
LISTING_SETTLE = timedelta(seconds=5)


class OutcomeUnknown(StillPending):
    """Whether an earlier attempt placed the order is not known yet: retried until it is known
    (never dead-lettered: that would leave an order that may exist unresolved)."""


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


PROBE_INTERVAL = 2.0
"""Seconds between an executor's looks at a broker that counts as down (refused keys,
unreachable, failing): the router sends it nothing meanwhile, so without a look of its own it
would stay down until the next snapshot (30 s) after it recovered. Only these looks ask it;
messages for it wait for the next one, so they go within this long of its return."""
DEFAULT_REQUEST_TIMEOUT = 10.0
ADVANCE_ATTEMPTS = 5
"""Times a report of an order is re-based on a newer ledger entry before it is retried later."""
MAX_LISTED_CANDIDATES = 50
"""Same-shaped orders of other intents a lookup steps over before giving up."""
DEFAULT_MAX_QUEUE_WAIT_S = RoutingConfig().max_queue_wait_s


class ExecutorHandlers:
    def __init__(
        self,
        worker: Worker,
        spec: ConsumerSpec,
        venue: Venue,
        ledger: OrderLedger,
        budget: RateBudget,
        *,
        daily: DailyOrderBudget,
    ) -> None:
        self.worker = worker
        self.spec = spec
        self.venue = venue
        self.ledger = ledger
        self.budget = budget
        self.daily = daily
        self.stats = VenueStats()
        self.request_timeout = DEFAULT_REQUEST_TIMEOUT
        """Seconds one broker call may take (the worker sets it from the config)."""
        self.max_queue_wait_s: float | None = DEFAULT_MAX_QUEUE_WAIT_S
        """``routing.max_queue_wait_s``: past this wait for its broker a route that never reached
        it fails over (the worker sets it from the config)."""
        self.after_fill: Callable[[], None] | None = None
        """Called when fills are reported (the worker refreshes the broker's positions)."""
        topology = worker.settings.topology
        self.shapes = SameShapeGuard(
            lambda: worker.js, topology.shape_locks_bucket, topology.attributions_bucket, str(venue.broker)
        )
        self._working: set[str] = set()
        self._early: dict[str, tuple[VenueOrder, float]] = {}
        """Stream updates of orders not recorded yet, by intent id: the latest, and when it came."""

    async def on_route(self, msg: Msg) -> None:
        await self.worker.deliver(DeadLetterStage.EXECUTOR, self.spec, msg, self.execute)

    async def execute(self, msg: Msg) -> str:
        if self.worker.subjects.kind(msg.subject) == "cancels":
            return await self.cancel(parse(CancelRequest, msg.data), stored_at(msg))
        decision = parse(RouteDecision, msg.data)
        structlog.contextvars.bind_contextvars(intent_id=decision.intent_id, broker=str(decision.broker))
        if decision.broker != self.venue.broker:
            raise PoisonMessage(f"route for {decision.broker} reached the {self.venue.broker} executor")
        if decision.intent_id in self._working:
            # Another delivery of this intent is in hand here: let it finish, then look again.
            raise OutcomeUnknown(f"intent {decision.intent_id} is already being placed by this executor")
        self._working.add(decision.intent_id)
        try:
            if self.venue.capabilities.has_client_order_id:
                return await self._execute(msg, decision)
            return await self._execute_one_shape_at_a_time(msg, decision)
        finally:
            self._working.discard(decision.intent_id)

    async def _execute_one_shape_at_a_time(self, msg: Msg, decision: RouteDecision) -> str:
        """At a broker without client order ids, hold the order shape's lock from the first look
        until the order is attributed (``same_shape``). On failure the lock stays with this
        intent: its order may exist unattributed, and its next delivery takes the lock again."""
        try:
            async with self.worker.aside():  # the order ahead may be redelivered to this executor
                await self.shapes.acquire(decision.intent)
        except ShapeBusy as exc:
            raise OutcomeUnknown(str(exc)) from exc
        outcome = await self._execute(msg, decision)
        await self.shapes.release(decision.intent)
        return outcome

    async def _execute(self, msg: Msg, decision: RouteDecision) -> str:
        client_order_id = decision.intent.intent_id
        # Orders placed for this decision cannot predate it; the margin covers clock skew.
        since = decision.created_at - LOOKUP_MARGIN
        delivery = delivery_count(msg)
        entry, revision = await self.ledger.get_versioned(decision.intent_id)
        client_ids = self.venue.capabilities.has_client_order_id
        plan = placement_plan(entry, decision, delivery, replayed=is_replay(msg), client_ids=client_ids)
        order = None
        known = entry  # as this delivery found it, before its own mark
        if plan.look_first:
            # An earlier delivery may have placed the order, even one JetStream now counts as a
            # first delivery (a restarted server forgets its latest acks): never place again
            # before finding out (brokers without client order ids would take it twice).
            try:
                order = await self._locate(decision, since)
            except VenueUnavailable as exc:
                if plan.nothing_sent:
                    return await self._unsent(decision, known, delivery, exc)
                raise OutcomeUnknown(f"{exc}; looking again once {self.venue.broker} answers", exc.retry_after) from exc
            if order is None and not plan.miss_is_conclusive:
                self._wait_for_listing(decision)
        if order is None:
            if plan.mark_before_placing:
                # The mark tells any later delivery that this order may exist at the broker.
                entry = LedgerEntry.of(decision, OrderStatus.SUBMITTED)
                revision = await self.ledger.put(entry)
            failpoint("before_place")
            try:
                order = await self._timed_place(decision, client_order_id)
            except VenueRejected as exc:
                return await self._rejected(decision, exc)
            except VenueUnavailable as exc:
                return await self._unsent(decision, known, delivery, exc)
            except (VenueDuplicate, VenueAmbiguous) as exc:
                # The order may exist (a lost reply) or does (a duplicate id): look it up. If it
                # is not there the order is `unknown`: the route is redelivered, and the next
                # delivery looks again before placing. It never fails over from here on.
                try:
                    order = await self._locate(decision, since)
                except (VenueError, TimeoutError) as lookup_failed:
                    await self._unknown(decision, exc)
                    after = getattr(lookup_failed, "retry_after", 0.0)
                    raise OutcomeUnknown(f"{exc}; the lookup failed too: {lookup_failed}", after) from lookup_failed
                if order is None:
                    await self._unknown(decision, exc)
                    raise OutcomeUnknown(f"{exc}; not found at {self.venue.broker} yet") from exc
            if not client_ids:
                await self.shapes.attribute(order.broker_order_id, decision.intent)
        failpoint("after_place")
        await self._record_order(decision, order, entry, revision)
        failpoint("after_report")  # reported, not yet acked
        return str(order.status)

    async def _call(self, work: Awaitable[T], what: str, *, probe: bool = False) -> T:
        """A broker call with its deadline (``brokers.<name>.request_timeout_s``): TimeoutError
        after it, so nothing waits on a hung broker while its message is kept in progress.

        A broker that counts as down is not asked (``probe``: the look that finds it up again):
        ``VenueUnavailable`` ready at the next look, so its messages wait for that, neither
        spending rate tokens on requests bound to fail (a refused key, again and again) nor
        backing off for longer than the broker stays down."""
        broker = str(self.venue.broker)
        if not probe and not self.venue.is_connected:
            if inspect.iscoroutine(work):
                work.close()
            raise VenueUnavailable(self.venue.down_because or f"{broker} is not connected", PROBE_INTERVAL)
        with telemetry.span("broker call", broker=broker, call=what):
            started = time.perf_counter()
            try:
                return await asyncio.wait_for(work, self.request_timeout)
            except TimeoutError:
                raise TimeoutError(f"{broker} did not answer within {self.request_timeout:g}s ({what})") from None
            finally:
                metrics.BROKER_CALL_SECONDS.labels(broker, what).observe(time.perf_counter() - started)

    async def broker_call(self, work: Awaitable[T], what: str, *, probe: bool = False) -> T:
        """A broker call outside order handling (account, positions, the look at a broker that
        counts as down) with the same deadline; ``probe``: asked even while the broker counts as
        down (the executor's look, a snapshot)."""
        return await self._call(work, what, probe=probe)

    async def _locate(self, decision: RouteDecision, since: datetime) -> VenueOrder | None:
        """This attempt's order at the broker, if any. Where the broker has no client order ids,
        orders already attributed to other intents are skipped, and a found one is attributed
        to this intent."""
        intent = decision.intent
        if self.venue.capabilities.has_client_order_id:
            return await self._call(self.venue.locate(intent, intent.intent_id, since), "looking the order up")
        for _ in range(MAX_LISTED_CANDIDATES):
            order = await self._call(
                self.venue.locate(intent, intent.intent_id, since, self.shapes.others(intent)), "listing orders"
            )
            if order is None:
                return None
            if await self.shapes.attribute(order.broker_order_id, intent):
                return order
        # Not "not found": an order of this intent may come after those stepped over so far (the
        # next delivery goes on from them, remembered as other intents' orders).
        raise OutcomeUnknown(
            f"{MAX_LISTED_CANDIDATES} same-shaped orders of other intents listed at {self.venue.broker} "
            "and this intent's not among them yet; looking further before anything is placed"
        )

    async def _unsent(
        self, decision: RouteDecision, known: LedgerEntry | None, delivery: int, exc: VenueUnavailable
    ) -> str:
        """The request provably never reached the broker: wait until the broker is ready again,
        or, when nothing of this attempt may be at the broker and the wait would exceed
        ``routing.max_queue_wait_s`` (counting what the route has waited already), hand the
        intent to the router for the next broker at once. A route that may have reached the
        broker (an earlier answer lost) waits and looks; it never fails over."""
        ready_in = exc.retry_after  # a 429 has blocked the budget already (the adapter's gate)
        code = exc.reason_code
        if known is not None and known.may_exist(decision):
            raise StillPending(f"{code}: {exc}; an earlier request may have placed the order", ready_in) from exc
        now = time.time()
        earlier = known if known is not None and known.unsent_since and known.attempt == decision.attempt else None
        since = earlier.unsent_since if earlier is not None and earlier.broker == decision.broker else now
        await self.ledger.put(LedgerEntry.of(decision, OrderStatus.NEW, unsent_delivery=delivery, unsent_since=since))
        elsewhere = any(b != decision.broker and b not in decision.failed_brokers for b in decision.fallback_chain)
        wait = failover_wait(now - since, ready_in, self.max_queue_wait_s, code, elsewhere=elsewhere)
        if wait is None:
            raise RetryLater(f"{code}: {exc}", ready_in) from exc
        why = f"{exc} (waited {now - since:.1f}s; {wait}; none of its requests reached the broker)"
        await self._emit(decision, report(decision, OrderStatus.FAILED, 1, reason_code=code, reason=why, final=False))
        await self._emit(decision, failover_event(decision, code, why))
        return f"failover:{code}"

    async def _unknown(self, decision: RouteDecision, exc: Exception) -> None:
        """Say the outcome is not known yet (report sequence 0: any later report supersedes it)."""
        why = f"{exc}; looking the order up before anything is retried"
        await self._emit(decision, report(decision, OrderStatus.UNKNOWN, 0, reason_code="outcome_unknown", reason=why))
        await self.ledger.put(LedgerEntry.of(decision, OrderStatus.UNKNOWN))

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
        await self.ledger.put(LedgerEntry.of(decision, OrderStatus.REJECTED, report_seq=1))
        if not final:
            await self._emit(decision, failover_event(decision, exc.reason_code, exc.reason))
            return f"failover:{exc.reason_code}"
        return f"rejected:{exc.reason_code}"

    async def _timed_place(self, decision: RouteDecision, client_order_id: str) -> VenueOrder:
        """Place the order, feeding latency and error rate into the heartbeat's statistics."""
        started = time.perf_counter()
        failed = False
        try:
            async with self.daily.order_call(self.budget, placement=True):  # a budget refusal spends no call
                return await self._call(self.venue.place_order(decision.intent, client_order_id), "placing the order")
        except TimeoutError as exc:
            failed = True
            # Sent, unanswered: the order may exist. Look it up; never send it blindly again.
            raise VenueAmbiguous(str(exc)) from exc
        except (VenueUnavailable, VenueAmbiguous):
            failed = True
            raise
        finally:
            self.stats.record((time.perf_counter() - started) * 1000, failed)

    async def _record_order(
        self, decision: RouteDecision, order: VenueOrder, known: LedgerEntry | None, revision: int
    ) -> None:
        """Report a newly placed order (accepted, its fills, where it stands now), then write it to
        the ledger: both happen before the route is acked, and a redelivery reports
        the order again whatever the ledger says (the stream drops the duplicates). ``known``
        and ``revision`` are the ledger entry this delivery read (the write is a compare-and-set
        against it)."""
        entry = LedgerEntry.of(
            decision, OrderStatus.ACCEPTED, report_seq=1, broker_order_id=order.broker_order_id, decision=decision
        )
        updated, changes = _changes(entry, order, decision)
        accepted = report(decision, OrderStatus.ACCEPTED, 1, order, final=False)
        # Report everything again (the stream drops what it already has), but never move the
        # ledger back: a redelivered route may find the order reported further by the poller.
        further = (
            known is not None
            and known.broker_order_id == order.broker_order_id
            and known.report_seq >= updated.report_seq
        )
        # Published first, recorded after: an entry must never record a state whose report lost
        # its sequence number to another writer's report (the chaos test caught a stale route
        # delivery recording "partially filled" under a number a cancel had already used).
        conflicts = await self._emit_all(decision, [accepted, *changes])
        if conflicts:
            # Some of these numbers were taken by reports another delivery built from another
            # state of the order. Make sure the ledger holds the order (report 1, "accepted", is
            # out whoever built it), then report from the ledger.
            unrecorded = known is None or known.broker_order_id != order.broker_order_id
            if unrecorded and not await self.ledger.put(entry, known, revision=revision):
                raise OutcomeUnknown(f"the ledger entry of {decision.intent_id} changed while the order was recorded")
            await self.advance(decision.intent_id, order)
        elif not further and not await self.ledger.put(updated, known, revision=revision):
            # Another writer changed the entry meanwhile: deliver the route again, which reports
            # the same messages (deduplicated) and records them on the entry as it now stands.
            raise OutcomeUnknown(f"the ledger entry of {decision.intent_id} changed while the order was recorded")
        await self.apply_early_updates(decision.intent_id)

    async def advance(self, intent_id: str, order: VenueOrder) -> LedgerEntry | None:
        """Report what the broker's ``order`` adds to the ledger entry (new fills, then the new
        status), then record it with compare-and-set.

        The reconcile poller, a cancel and a redelivered route (in this replica or another) may
        all report the same order. Whoever loses the compare-and-set, or finds its report's
        sequence number already taken by another report, re-reads the ledger (and the broker)
        and reports from there: every state change is reported once, under its own number."""
        current: VenueOrder | None = order
        for _ in range(ADVANCE_ATTEMPTS):
            entry, revision = await self.ledger.get_versioned(intent_id)
            if current is not None and (entry is None or not entry.broker_order_id):
                # The broker (its stream, mostly) tells of an order before the delivery that
                # placed it recorded it here: keep the news until the entry exists.
                self._keep_early(intent_id, current)
                return entry
            if entry is None or entry.decision is None or current is None:
                return entry
            decision = entry.decision
            updated, changes = _changes(entry, current, decision)
            if not changes:
                return entry
            conflicts = await self._emit_all(decision, changes)
            if conflicts:
                # Another writer published this sequence number with other content, and the
                # ledger may not show it yet (it crashed in between): take it as reported.
                taken = ExecutionReport.model_validate_json(conflicts[-1])
                adopted = entry.model_copy(
                    update={
                        "status": taken.status,
                        "report_seq": taken.report_seq,
                        "filled_quantity": taken.filled_quantity,
                    }
                )
                await self.ledger.put(adopted, entry, revision=revision)
            elif await self.ledger.put(updated, entry, revision=revision):
                return updated
            current = await self._call(self.venue.get_order(entry.broker_order_id), "reading the order")
        raise OutcomeUnknown(f"the ledger entry of {intent_id} kept changing; reporting it again later")

    def _keep_early(self, intent_id: str, order: VenueOrder) -> None:
        """Keep the latest news of an order not recorded yet (the stream tells in order), within
        ``EARLY_UPDATES_KEPT`` intents: an account's orders placed outside mbx never get recorded."""
        self._early.pop(intent_id, None)
        self._early[intent_id] = (order, time.monotonic())
        while len(self._early) > EARLY_UPDATES_KEPT:
            del self._early[next(iter(self._early))]

    async def apply_early_updates(self, intent_id: str | None = None) -> None:
        """Report the kept news of orders recorded since (of ``intent_id``, or of every one):
        applied at once when the delivery that placed an order records it, and on a short timer
        for orders recorded by another replica. News older than ``EARLY_UPDATE_TTL`` is dropped
        (the poller reads such an order over REST anyway)."""
        intents = [intent_id] if intent_id is not None else list(self._early)
        for intent in intents:
            kept = self._early.pop(intent, None)
            if kept is None:
                continue
            order, since = kept
            if time.monotonic() - since > EARLY_UPDATE_TTL.total_seconds():
                continue
            try:
                await self.advance(intent, order)  # kept again while still unrecorded
            except Exception as exc:  # noqa: BLE001  (the poller reads the order over REST)
                log.warning("early order update not reported", intent_id=intent, error=f"{type(exc).__name__}: {exc}")
            again = self._early.get(intent)
            if again is not None and again[0] is order:
                self._early[intent] = (order, since)  # still unrecorded: it keeps its age

    async def cancel(self, request: CancelRequest, sent_at: datetime | None = None) -> str:
        """Cancel the order at the broker, or say why it cannot be cancelled. ``sent_at``: when
        the router forwarded the request here."""
        structlog.contextvars.bind_contextvars(intent_id=request.intent_id, broker=str(self.venue.broker))
        entry = await self.ledger.get(request.intent_id)
        unrecorded = entry is None or (
            entry.broker == self.venue.broker and not entry.broker_order_id and not entry.status.is_terminal
        )
        now = datetime.now(UTC)
        if unrecorded and now - (sent_at or now) < CANCEL_WAIT:
            # Routed here but not recorded yet: the route is queued, being placed, or was placed
            # by a delivery that died before recording it (redelivered after the ack wait). Look
            # again then, rather than refuse to cancel an order that may exist. Bounded by time,
            # not deliveries: a crashed executor takes a delivery of every message in its hands.
            raise StillPending(f"no order of {request.intent_id} recorded here yet", self.spec.ack_wait_seconds / 2)
        if entry is None or entry.broker != self.venue.broker or unrecorded:
            why = "no order at this broker"
            if unrecorded:
                why = f"no order of this intent was recorded here within {CANCEL_WAIT.total_seconds():.0f}s"
            return await self._cancel_rejected(request, None, "unknown_order", why)
        if not entry.working:
            return await self._cancel_rejected(
                request, entry.status, "too_late_to_cancel", f"the order is already {entry.status}"
            )
        try:
            async with self.daily.order_call(self.budget, placement=False):  # a budget refusal spends no call
                order = await self._call(self.venue.cancel_order(entry.broker_order_id), "cancelling")
        except VenueRejected as exc:
            current = await self._call(self.venue.get_order(entry.broker_order_id), "reading the order")
            if current is None:
                raise  # the ledger and the broker disagree: retry, then dead-letter
            await self.advance(entry.intent_id, current)
            if current.status is OrderStatus.CANCELLED:
                # Cancelled already: by this cancel's earlier request whose answer was lost (the
                # DELETE sent again finds it done), or from elsewhere. What it asked for holds.
                return f"cancel:{current.status}"
            return await self._cancel_rejected(request, current.status, exc.reason_code, exc.reason)
        except VenueAmbiguous as exc:
            # The cancel may have reached the broker (a 5xx or no answer to the DELETE): report
            # the order as it stands; while it still works, the cancel is sent again (a cancel
            # sent twice cancels once).
            current = await self._call(self.venue.get_order(entry.broker_order_id), "reading the order")
            if current is not None:
                await self.advance(entry.intent_id, current)
            if current is None or not current.status.is_terminal:
                raise StillPending(f"{exc}; the order still works, cancelling again") from exc
            return f"cancel:{current.status}"
        await self.advance(entry.intent_id, order)
        return f"cancel:{order.status}"

    async def _cancel_rejected(self, request: CancelRequest, status: OrderStatus | None, code: str, why: str) -> str:
        reject = cancel_reject(request, self.venue.broker, code, why, status)
        await publish(
            self.worker.js,
            self.worker.subjects.cancel_reject(self.venue.broker, request.strategy_id),
            reject,
            intent_id=request.intent_id,
            strategy_id=request.strategy_id,
        )
        return f"cancel_rejected:{code}"

    async def reconcile(self) -> int:
        """Settle every order of this broker the ledger shows as still working (at start-up, then
        on a timer). An order that cannot be read or reported is logged and skipped, the others
        settled; the next pass tries it again. A broker that cannot be reached at all (or the
        rate budget) ends the pass: no order could be settled then."""
        settled = 0
        for entry in await self.ledger.open_orders(self.venue.broker):
            try:
                order = await self._call(self.venue.get_order(entry.broker_order_id), "reading the order")
                if order is None:
                    log.warning("ledger order not found at the broker", intent_id=entry.intent_id)
                    continue
                updated = await self.advance(entry.intent_id, order)
            except VenueUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001  (this order only; the next pass tries again)
                why = f"{type(exc).__name__}: {exc}"
                log.warning("working order not settled", intent_id=entry.intent_id, error=why)
                continue
            if updated is not None and updated != entry:
                settled += 1
        return settled

    async def _emit(self, decision: RouteDecision, message: ExecutionReport | Fill | FailoverEvent) -> None:
        await self._emit_all(decision, [message])

    async def _emit_all(
        self, decision: RouteDecision, messages: Sequence[ExecutionReport | Fill | FailoverEvent]
    ) -> list[bytes]:
        """Publish in order and wait for every acknowledgement together: the messages leave in
        one write, and a failure of any raises (the route is redelivered, and the broker's
        state reported again under the same message ids, which the stream deduplicates).
        Returns the stored payloads of messages whose id was already taken by other content
        (a report numbered by another writer): never ignored, the caller reconciles."""
        subjects = self.worker.subjects
        sends = []
        if self.after_fill is not None and any(isinstance(m, Fill) for m in messages):
            self.after_fill()
        for message in messages:
            if isinstance(message, Fill):
                subject = subjects.fill(message.broker, message.symbol, message.strategy_id)
            elif isinstance(message, FailoverEvent):
                subject = subjects.failover(message.failed_broker)
            else:
                subject = subjects.execution(message.broker, message.status, message.strategy_id)
            sends.append(
                publish_checked(
                    self.worker.js, subject, message, intent_id=decision.intent_id, strategy_id=decision.strategy_id
                )
            )
        return [stored for stored in await asyncio.gather(*sends) if stored is not None]


def _changes(
    entry: LedgerEntry, order: VenueOrder, decision: RouteDecision
) -> tuple[LedgerEntry, list[ExecutionReport | Fill | FailoverEvent]]:
    """What the broker's ``order`` adds to what ``entry`` has reported: the new fills, then a
    report of the new status; and the ledger entry once they are published."""
    messages: list[ExecutionReport | Fill | FailoverEvent] = [
        fill_message(decision, order, fill) for fill in order.fills[entry.fill_count :]
    ]
    seq = entry.report_seq
    if is_behind(entry.status, order.status) and order.filled_quantity <= entry.filled_quantity:
        # A reply that lags the ledger (earlier in the order's life, nothing more filled; the
        # cumulative quantity never shrinks) is no news: the entry stays as it is.
        return entry, messages
    if order.status != entry.status or order.filled_quantity != entry.filled_quantity:
        check_move(entry.status, order.status)
        seq += 1
        messages.append(report(decision, order.status, seq, order))
    updated = entry.model_copy(
        update={
            "status": order.status,
            "report_seq": seq,
            "filled_quantity": order.filled_quantity,
            "fill_count": len(order.fills),
        }
    )
    return updated, messages


@dataclass(frozen=True, slots=True)
class PlacementPlan:
    look_first: bool
    """Look the order up at the broker before placing anything."""
    miss_is_conclusive: bool
    """Not finding it proves it was never placed (else: retry once the broker's list settles)."""
    mark_before_placing: bool
    """Write a ``submitted`` ledger entry before sending, for later deliveries to find."""
    nothing_sent: bool = False
    """Nothing of this attempt can have reached the broker yet (a failed look proves nothing
    more: the route may fail over as for a request refused before sending)."""


def placement_plan(
    entry: LedgerEntry | None, decision: RouteDecision, delivery: int, *, replayed: bool, client_ids: bool
) -> PlacementPlan:
    """Whether to look before placing, decided from the ledger, the delivery and the broker.

    The delivery count alone cannot be trusted: a nats-server that crashed redelivers messages
    whose acks it lost as first deliveries. So the ledger decides too: an entry of this very
    attempt means an earlier delivery got at least as far as writing it. At a broker with client
    order ids placing is itself safe (a repeated id is refused or returns the original order);
    at one without, every delivery looks first, and a miss is conclusive only when nothing says
    an earlier delivery ever tried (no entry of this attempt, first delivery, not a replay).
    """
    same_attempt = entry is not None and entry.broker == decision.broker and entry.attempt == decision.attempt
    ours = entry if same_attempt else None
    if ours is not None and ours.status is OrderStatus.NEW and ours.unsent_delivery == delivery - 1:
        # Every earlier delivery provably failed before reaching the broker.
        return PlacementPlan(look_first=False, miss_is_conclusive=True, mark_before_placing=not client_ids)
    tried = ours is not None or delivery > 1 or replayed
    return PlacementPlan(
        look_first=tried or not client_ids,
        miss_is_conclusive=client_ids or not tried,
        mark_before_placing=not client_ids,
        nothing_sent=not tried,
    )


def failover_wait(
    waited: float, ready_in: float, max_wait: float | None, code: str, *, elsewhere: bool = True
) -> str | None:
    """Why a route that never reached its broker goes to the next broker now (None: it waits).

    ``waited``: seconds since its first refused request; ``ready_in``: until the broker is
    ready again (0: not known, as for a broker that is down); ``max_wait``:
    ``routing.max_queue_wait_s`` (None: routes wait for their broker, except for the day's
    order calls, which come back only the next day); ``elsewhere``: the route's fallback chain
    names a broker that has not failed it. Without one a failover could only end the intent
    rejected, and a condition that passes delays an order, never rejects it: it waits."""
    if not elsewhere:
        return None
    if code == DailyOrdersSpent.reason_code:
        return "the day's order calls are spent"
    if max_wait is None:
        return None
    if waited + ready_in > max_wait:
        return f"ready again in {ready_in:.1f}s, past routing.max_queue_wait_s ({max_wait:g}s)"
    return None
