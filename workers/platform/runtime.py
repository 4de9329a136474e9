"""What every worker shares: the FastStream broker, topology at start-up, and the delivery policy.

Delivery policy (the same for every stage, decided by ``disposition`` alone). A delivery that
fails, fails for exactly one of:
- **poison**: the message can never succeed as it is (cannot be parsed, fails validation, the
  same deterministic error every time): copied to the dead-letter stream with the reason at
  this delivery, then acked. If even the copy cannot be written (anything but the bus being
  away), the message is logged with its stream sequence and terminated: never redelivered for
  ever;
- **a condition that will pass** (``RetryLater``: a broker's 429 until its reset, the rate
  budget, a down broker, an expired key, the day's order calls; NATS electing a leader or
  reconnecting): redelivered once it is ready again (its own "ready again at", bounded by
  ``MAX_WAIT_S``), never counted toward a dead letter;
- **an outcome not known yet** (``StillPending``: an order that may exist, a cancel waiting for
  its order, a broker's list catching up): looked at again later, never counted.
Anything else is unexpected (a defect, not a condition of the broker or the bus): retried with a
growing delay and dead-lettered at delivery ``dead_letter_after`` (5) with the last error, so a
bug cannot hold a message for ever. The server never stops redelivering by itself
(``max_deliver`` -1): only a handled delivery ends one. Success: ack after everything the
handler published was acknowledged by JetStream.

Acks are explicit everywhere (never FastStream's JetStream default, which terminates a message on
any error and would drop an order silently).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import json
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from faststream.nats import NatsBroker
from pydantic import BaseModel, ValidationError

from contracts import INTENT_ID_HEADER, DeadLetterStage
from workers.domain.config import ConfigError
from workers.domain.venue import VenueAmbiguous, VenueDuplicate, VenueUnavailable
from workers.platform import metrics, telemetry
from workers.platform.access import broker_options
from workers.platform.bus import (
    BUS_UNAVAILABLE,
    JetStream,
    dead_letter,
    delivery_count,
    ensure_consumer,
    ensure_streams,
    jetstream,
    open_bucket,
    stream_sequence,
    use_replicas,
)
from workers.platform.settings import Settings
from workers.platform.topology import ConsumerSpec

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

log = structlog.get_logger("mbx.worker")

M = TypeVar("M", bound=BaseModel)

PULL_WAIT = 0.5
"""Seconds a pending pull request waits for a first message (and the longest ``stop`` waits)."""
HANDLER_GRACE = 3.0
"""Seconds ``stop`` lets in-hand messages finish; a handler still waiting then (for a rate token
or a slow broker) is abandoned un-acked, and its message is redelivered."""
STEP_TIMEOUT = 2.0
"""Seconds each later step of ``stop`` may take: timers, clean-up, disconnect."""
DRAIN_WAIT = 0.1
"""Seconds to wait for messages ``num_pending`` promised (another replica may have taken them)."""
RESUME_PAUSE_S = (0.5, 5.0)
"""First and longest pause between two tries to resume after a reconnect."""


class PoisonMessage(Exception):
    """The message can never be processed as it is: dead-letter it with this reason."""


DETERMINISTIC: tuple[type[Exception], ...] = (ArithmeticError, ValidationError, UnicodeError)
"""Failures a handler meets the same way on every delivery of the same message (arithmetic on
out-of-range numbers, a model the input cannot build): dead-lettered at once, never retried."""


class RetryLater(Exception):
    """A condition that will pass (a broker's 429 until its reset, the rate budget, a down
    broker, NATS electing a leader): the message is redelivered once it is ready again, ``after``
    seconds from now (0: not known, a growing delay), and never counted toward a dead letter."""

    def __init__(self, message: str, after: float = 0.0) -> None:
        super().__init__(message)
        self.after = after


class StillPending(RetryLater):
    """The message's outcome waits on something under way (another message's order, a broker's
    order list catching up, a lookup of an order that may exist): retried until it resolves and
    never dead-lettered for its number of deliveries. Those count every delivery a crashed worker
    took with it, and a dead letter would leave the order unresolved rather than resolve it."""


BUS_WAITS: tuple[type[Exception], ...] = (*BUS_UNAVAILABLE, TimeoutError, ConnectionError)
"""NATS electing, reconnecting, a call past its deadline: conditions that pass."""
MAX_WAIT_S = 120.0
"""Longest a message waits before its next delivery (a broker's rate-limit window is at most a
minute; a down broker is looked at again at least this often)."""
MIN_WAIT_S = 0.05
"""Shortest wait before a redelivery (a broker whose reset has just passed)."""


class Verdict(StrEnum):
    POISON = "poison"
    """Never succeeds: dead-letter now."""
    WAIT = "wait"
    """A condition that passes: redeliver when ready, uncounted."""
    LOOK = "look"
    """An outcome not known yet: look again later, uncounted."""
    UNEXPECTED = "unexpected"
    """A defect: retried a bounded number of times, then dead-lettered."""


@dataclass(frozen=True, slots=True)
class Disposition:
    verdict: Verdict
    delay: float = 0.0
    """Seconds before the next delivery (for the verdicts that redeliver)."""


def disposition(exc: BaseException, deliveries: int) -> Disposition:
    """The one classification of a failed delivery (see the module's docstring): what ``exc``
    means for the message, and how long until its next delivery."""
    if isinstance(exc, (PoisonMessage, *DETERMINISTIC)):
        return Disposition(Verdict.POISON)
    backoff = retry_delay(deliveries)
    if isinstance(exc, StillPending):
        return Disposition(Verdict.LOOK, _bounded(exc.after) or backoff)
    if isinstance(exc, (VenueAmbiguous, VenueDuplicate)):
        # Raised past the executor's own handling: the order may exist; look again.
        return Disposition(Verdict.LOOK, backoff)
    if isinstance(exc, RetryLater):
        return Disposition(Verdict.WAIT, _bounded(exc.after) or backoff)
    if isinstance(exc, VenueUnavailable):
        return Disposition(Verdict.WAIT, _bounded(exc.retry_after) or backoff)
    if isinstance(exc, BUS_WAITS):
        # NATS electing, reconnecting; a broker call past its deadline.
        return Disposition(Verdict.WAIT, backoff)
    return Disposition(Verdict.UNEXPECTED, backoff)


def _bounded(seconds: float) -> float:
    return min(max(seconds, MIN_WAIT_S), MAX_WAIT_S) if seconds > 0 else 0.0


def parse(model: type[M], data: bytes) -> M:
    """Decode a payload into a contract model, or raise ``PoisonMessage`` saying why not."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in exc.errors()[:10]
        )
        raise PoisonMessage(f"invalid {model.__name__}: {problems}") from None


def retry_delay(deliveries: int) -> float:
    """Seconds before the next delivery: 0.5, 1, 2, 4 ... capped at 30."""
    return float(min(30.0, 0.5 * 2 ** min(max(deliveries - 1, 0), 6)))


_room: contextvars.ContextVar[asyncio.Semaphore | None] = contextvars.ContextVar("room", default=None)
"""The in-hand places of the overlapping subscription whose message this task handles."""


@dataclass
class _Subscription:
    spec: ConsumerSpec
    handle: Callable[[list[Msg]], Awaitable[None]]
    batch_size: int


class Worker:
    """A NATS connection (owned by a FastStream ``NatsBroker``), the topology it needs, and one
    pull loop per durable consumer. ``start`` and ``stop`` it.

    The pull loop is ours rather than FastStream's ``PullSub`` for two measured reasons:
    nats-py's ``fetch(n)`` keeps waiting to fill the batch once a first message arrives (adding
    up to the pull timeout to every hop), and stopping a FastStream subscriber cancels a pending
    pull request that the server may still answer, stranding that message until ``ack_wait``.
    Here a pending ``fetch(1)`` returns on the first message, the message's ``num_pending``
    tells whether more are waiting (then fetched at once, up to the batch size), and ``stop``
    lets the current fetch finish and its messages be handled before disconnecting.
    """

    def __init__(self, name: str, settings: Settings) -> None:
        if not settings.nats_url:
            raise ConfigError("nats_url: not set (MBX_NATS_URL, or run `mbx up`)")
        self.name = name
        self.settings = settings
        self.subjects = settings.subjects
        self.broker = NatsBroker(
            settings.nats_servers,
            graceful_timeout=STEP_TIMEOUT,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            logger=None,
            reconnected_cb=self._reconnected,
            disconnected_cb=self._disconnected,
            error_cb=self._nats_error,
            **broker_options(settings),
        )
        self._subscriptions: list[_Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._pulls: list[JetStreamContext.PullSubscription] = []
        self._stopping = asyncio.Event()
        self._js: JetStream | None = None
        self._listeners: list[Any] = []
        self._timers: list[asyncio.Task[None]] = []
        self._in_hand: set[asyncio.Task[None]] = set()
        self._resuming: asyncio.Task[None] | None = None
        self.metrics_url: str | None = None
        self.refusals: list[str] = []
        """What NATS refused this worker (permissions, credentials), newest last."""

    async def _nats_error(self, exc: Exception) -> None:
        """What NATS refused (a permission, the credentials) is logged; the connection's own
        troubles are told by the disconnect and reconnect lines."""
        text = str(exc)
        if "permissions violation" in text.lower() or "authorization" in text.lower():
            self.refusals.append(text)
            log.error("NATS refused", worker=self.name, error=text)

    async def _disconnected(self) -> None:
        if not self._stopping.is_set():
            log.warning("disconnected from NATS; reconnecting", worker=self.name)
            self.connection_changed()

    async def _reconnected(self) -> None:
        log.info("reconnected to NATS", worker=self.name)
        self.connection_changed()
        if self._js is not None and not self._stopping.is_set():
            if self._resuming is not None:
                self._resuming.cancel()  # this connection is the one to resume on
            self._resuming = asyncio.create_task(self._after_reconnect(), name=f"{self.name}:reconnected")
            self._timers.append(self._resuming)

    async def _after_reconnect(self) -> None:
        """``reconnected`` until it succeeds: a cluster that lost a node answers "no response
        from stream" or times out until its new stream leaders are elected (seconds), and a
        resume given up on leaves watches dead with no later reconnect to try again."""
        pause = RESUME_PAUSE_S[0]
        while not self._stopping.is_set():
            try:
                await self.reconnected()
            except Exception as exc:  # noqa: BLE001  (logged; tried again)
                log.warning(
                    "resuming after reconnect failed; trying again",
                    worker=self.name,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=pause,
                )
            else:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)
            pause = min(pause * 2, RESUME_PAUSE_S[1])

    def connection_changed(self) -> None:
        """Called at once (before any message is handled) when the connection drops or comes
        back (override): what must not wait for ``reconnected``."""

    async def reconnected(self) -> None:
        """Resume what a server restart may have broken: watches, caches (override). The
        server may have lost its latest writes, so nothing read before may be trusted."""

    @property
    def js(self) -> JetStream:
        if self._js is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._js

    def subscribe(
        self,
        spec: ConsumerSpec,
        handler: Callable[[Msg], Awaitable[Any]],
        *,
        batch_size: int,
        overlapping: bool = False,
        arrange: Callable[[list[Msg]], list[Msg]] | None = None,
    ) -> None:
        """Handle each message of a durable consumer; a fetched batch is handled concurrently.

        ``overlapping``: the next batch is fetched while earlier messages are still in hand (at
        most ``batch_size`` at once), so a handler that waits for another message's outcome
        (a same-shaped order at a broker without client ids) never holds that message back.
        ``arrange``: the order in which a fetched batch's messages are started (each still
        handled concurrently; the first started is the first to run up to its first wait).
        """
        arranged = arrange or list

        async def handle(msgs: list[Msg]) -> None:
            await asyncio.gather(*(handler(m) for m in arranged(msgs)))

        if not overlapping:
            self._subscriptions.append(_Subscription(spec, handle, batch_size))
            return
        room = asyncio.Semaphore(batch_size)

        async def one(msg: Msg) -> None:
            _room.set(room)
            try:
                await handler(msg)
            finally:
                room.release()

        async def start_each(msgs: list[Msg]) -> None:
            for msg in arranged(msgs):
                await room.acquire()
                task = asyncio.create_task(one(msg), name=f"{self.name}:{spec.durable}:message")
                self._in_hand.add(task)
                task.add_done_callback(self._in_hand.discard)

        self._subscriptions.append(_Subscription(spec, start_each, batch_size))

    @contextlib.asynccontextmanager
    async def aside(self) -> AsyncIterator[None]:
        """Set the message in hand aside while waiting for another message's outcome: its place
        among the ``batch_size`` in hand is given up meanwhile (and taken back after), so the
        message it waits for can still be fetched. Only in an ``overlapping`` subscription."""
        room = _room.get()
        if room is None:
            yield
            return
        room.release()
        try:
            yield
        finally:
            await room.acquire()

    def subscribe_batch(
        self, spec: ConsumerSpec, handler: Callable[[list[Msg]], Awaitable[None]], *, batch_size: int
    ) -> None:
        """Handle each fetched batch of a durable consumer at once (one transaction per batch)."""
        self._subscriptions.append(_Subscription(spec, handler, batch_size))

    async def start(self) -> None:
        use_replicas(self.settings.stream_replicas)
        telemetry.configure_tracing(self.name)
        await self.broker.connect()
        self._js = jetstream(self.broker.connection)
        await ensure_streams(self._js, self.subjects)
        self._stopping.clear()
        self.metrics_url = _serve_metrics(self.settings)
        if self.metrics_url:
            await self._announce_metrics()
            self.every(metrics.ANNOUNCE_TTL_S / 3, self._announce_metrics, "announcing the metrics address")
        await self.prepare()
        for sub in self._subscriptions:
            await ensure_consumer(self._js, sub.spec)
            pull = await self._js.pull_subscribe_bind(sub.spec.durable, sub.spec.stream)
            self._pulls.append(pull)
            self._tasks.append(asyncio.create_task(self._pull_loop(sub, pull), name=f"{self.name}:{sub.spec.durable}"))
        log.info("worker started", worker=self.name)

    async def prepare(self) -> None:
        """Load what the handlers need before the first message is pulled (override)."""

    async def _announce_metrics(self) -> None:
        """Say where this worker's metrics are, for ``mbx status`` (the entry expires unless
        said again)."""
        kv = await open_bucket(self.js, self.settings.topology.scrape_bucket, ttl=metrics.ANNOUNCE_TTL_S)
        key = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.name}.{socket.gethostname()}.{os.getpid()}")
        await kv.put(key, json.dumps({"worker": self.name, "url": self.metrics_url}).encode())

    async def listen(self, subject: str, handler: Callable[[Msg], Awaitable[None]], queue: str = "") -> None:
        """Answer core NATS requests on ``subject`` until the worker stops (request/reply APIs)."""
        self._listeners.append(await self.broker.connection.subscribe(subject, queue=queue, cb=handler))

    def every(self, seconds: float, work: Callable[[], Awaitable[Any]], what: str) -> None:
        """Run ``work`` every ``seconds`` until the worker stops; a failed run is logged and
        tried again next time."""

        async def loop() -> None:
            # Ends when the worker stops, even if a library swallowed the task's cancellation.
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), seconds)
                    return
                try:
                    await work()
                except Exception as exc:  # noqa: BLE001  (missed once, tried again next time)
                    log.warning(f"{what} failed", worker=self.name, error=f"{type(exc).__name__}: {exc}")

        self._timers.append(asyncio.create_task(loop(), name=f"{self.name}:{what}"))

    def background(self, work: Callable[[], Awaitable[Any]], what: str) -> None:
        """Run ``work`` (a loop of its own, such as a broker's event stream) until the worker
        stops; it is cancelled then, like the timers."""

        async def run() -> None:
            try:
                await work()
            except Exception as exc:  # noqa: BLE001  (the worker carries on; the poller covers)
                log.error(f"{what} ended", worker=self.name, error=f"{type(exc).__name__}: {exc}")

        self._timers.append(asyncio.create_task(run(), name=f"{self.name}:{what}"))

    async def _release(self) -> None:
        for sub in self._listeners:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._listeners.clear()
        for timer in self._timers:
            timer.cancel()
        if self._timers:
            _, stuck = await asyncio.wait(self._timers, timeout=STEP_TIMEOUT)
            for timer in stuck:
                log.error("timer did not stop in time", worker=self.name, task=timer.get_name())
        self._timers.clear()

    async def cleanup(self) -> None:
        """Release what ``prepare`` set up, after the pull loops ended (override)."""

    @property
    def stopping(self) -> asyncio.Event:
        return self._stopping

    async def stop(self) -> None:
        """Finish the messages in hand, then disconnect. Every step is bounded: a handler still
        busy after ``HANDLER_GRACE`` is cancelled (its message is redelivered, nothing is lost),
        and the stack it was stuck in is logged."""
        self._stopping.set()
        grace_ends = time.monotonic() + HANDLER_GRACE
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=HANDLER_GRACE)
            for task in stuck:
                where = io.StringIO()
                task.print_stack(file=where)
                log.warning(
                    "handler did not finish in time; abandoned un-acked (it will be redelivered)",
                    worker=self.name,
                    task=task.get_name(),
                    stack=where.getvalue(),
                )
                task.cancel()
            if stuck:
                await asyncio.wait(stuck, timeout=STEP_TIMEOUT)
        self._tasks.clear()
        if self._in_hand:
            # Messages handed to their own tasks by an overlapping subscription.
            left = max(grace_ends - time.monotonic(), 0.05)
            _, stuck_messages = await asyncio.wait(set(self._in_hand), timeout=left)
            for task in stuck_messages:
                task.cancel()
            if stuck_messages:
                log.warning(
                    "handlers did not finish in time; abandoned un-acked", worker=self.name, count=len(stuck_messages)
                )
                await asyncio.wait(stuck_messages, timeout=STEP_TIMEOUT)
        await self._release()
        try:
            await asyncio.wait_for(self.cleanup(), STEP_TIMEOUT)
        except TimeoutError:
            log.error("clean-up did not finish in time", worker=self.name)
        # Unsubscribe before the broker drains the connection: a drained pull subscription
        # waits forever on its internal queue.
        for pull in self._pulls:
            with contextlib.suppress(Exception):
                await pull.unsubscribe()
        self._pulls.clear()
        try:
            await asyncio.wait_for(self.broker.stop(), STEP_TIMEOUT)
        except TimeoutError:
            log.error("disconnect did not finish in time; closing", worker=self.name)
            with contextlib.suppress(Exception):
                await self.broker.connection.close()
        self._js = None
        log.info("worker stopped", worker=self.name)

    async def _pull_loop(self, sub: _Subscription, pull: JetStreamContext.PullSubscription) -> None:
        while not self._stopping.is_set():
            try:
                msgs = await pull.fetch(1, timeout=PULL_WAIT)
                waiting = _num_pending(msgs[-1])
                metrics.CONSUMER_PENDING.labels(sub.spec.durable).set(waiting)
                if waiting and sub.batch_size > 1:
                    with contextlib.suppress(TimeoutError):
                        msgs += await pull.fetch(min(sub.batch_size - 1, waiting), timeout=DRAIN_WAIT)
            except TimeoutError:
                continue
            except Exception as exc:  # noqa: BLE001  (connection trouble: wait and pull again)
                log.warning("pull failed", consumer=sub.spec.durable, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5)
                continue
            try:
                await sub.handle(msgs)
            except Exception:  # unacked messages are redelivered after ack_wait
                log.exception("handler failed", consumer=sub.spec.durable)

    async def deliver(
        self, stage: DeadLetterStage, spec: ConsumerSpec, msg: Msg, process: Callable[[Msg], Awaitable[str]]
    ) -> str:
        """Run ``process`` on one message under the delivery policy, in a span of the trace its
        publisher sent; returns the outcome."""
        started = time.perf_counter()
        structlog.contextvars.bind_contextvars(subject=msg.subject)
        with telemetry.consuming(
            f"{stage} {self.subjects.kind(msg.subject)}",
            msg.headers,
            subject=msg.subject,
            intent_id=(msg.headers or {}).get(INTENT_ID_HEADER, ""),
            delivery=delivery_count(msg),
        ) as span:
            outcome = await self._handle(stage, spec, msg, process)
            span.set_attribute("outcome", outcome)
            took = time.perf_counter() - started
            # One summary line per message, with the intent and broker the handler bound.
            log.info(
                "handled",
                stage=str(stage),
                subject=msg.subject,
                outcome=outcome,
                deliveries=delivery_count(msg),
                duration_ms=round(took * 1000, 2),
            )
        metrics.MESSAGES_HANDLED.labels(str(stage), outcome.split(":", 1)[0]).inc()
        metrics.HANDLE_SECONDS.labels(str(stage)).observe(took)
        structlog.contextvars.unbind_contextvars("subject", "intent_id", "broker")
        return outcome

    async def _handle(
        self, stage: DeadLetterStage, spec: ConsumerSpec, msg: Msg, process: Callable[[Msg], Awaitable[str]]
    ) -> str:
        keepalive = asyncio.create_task(_keep_in_progress(msg, spec.ack_wait_seconds / 3))
        try:
            outcome = await process(msg)
        except Exception as exc:  # noqa: BLE001  (every failure is classified by ``disposition``)
            keepalive.cancel()
            outcome = await self._failed(stage, spec, msg, exc)
        else:
            keepalive.cancel()
            try:
                await msg.ack()
            except Exception as exc:  # noqa: BLE001  (handled in full: a redelivery repeats it idempotently)
                log.warning("ack failed; the handled message may be redelivered", error=f"{type(exc).__name__}: {exc}")
                outcome += " (ack failed)"
        finally:
            keepalive.cancel()
        return outcome

    async def _failed(self, stage: DeadLetterStage, spec: ConsumerSpec, msg: Msg, exc: Exception) -> str:
        deliveries = delivery_count(msg)
        error = str(exc) if isinstance(exc, PoisonMessage) else f"{type(exc).__name__}: {exc}"
        verdict = disposition(exc, deliveries)
        if verdict.verdict is Verdict.POISON:
            return await self._dead_letter(stage, msg, error)
        if verdict.verdict is Verdict.UNEXPECTED and deliveries >= spec.give_up_after:
            return await self._dead_letter(stage, msg, f"gave up after {deliveries} deliveries: {error}")
        log.warning(
            "will retry" if verdict.verdict is Verdict.UNEXPECTED else f"{verdict.verdict}: will deliver again",
            stage=str(stage),
            subject=msg.subject,
            error=error,
            deliveries=deliveries,
            retry_in_s=round(verdict.delay, 3),
        )
        try:
            await msg.nak(delay=verdict.delay)
        except Exception:  # no ack reaches the server: it redelivers after ack_wait
            log.exception("nak failed")
        return "retry" if verdict.verdict is Verdict.UNEXPECTED else str(verdict.verdict)

    async def _dead_letter(self, stage: DeadLetterStage, msg: Msg, error: str) -> str:
        try:
            await dead_letter(self.js, self.subjects, stage, msg, error)
        except BUS_WAITS as exc:
            # The bus cannot take the letter now: the message comes back and is judged again.
            log.warning("dead-lettering must wait for NATS", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                await msg.nak(delay=retry_delay(delivery_count(msg)))
            return "dead_letter_later"
        except Exception as exc:  # noqa: BLE001  (the letter itself cannot be written: never loop)
            log.error(
                "dead-lettering failed; the message is terminated",
                error=f"{type(exc).__name__}: {exc}",
                stream_sequence=stream_sequence(msg),
                payload_bytes=len(msg.data or b""),
                reason=error[:300],
            )
            with contextlib.suppress(Exception):
                await msg.term()
            return "terminated"
        metrics.DEAD_LETTERS.labels(str(stage)).inc()
        return "dead_letter"


async def _keep_in_progress(msg: Msg, every: float) -> None:
    """Tell JetStream the message is still being worked on, so a slow handler (a broker lookup
    under load) is never overtaken by a redelivery of the same message."""
    while True:
        await asyncio.sleep(every)
        try:
            await msg.in_progress()
        except Exception:  # noqa: BLE001  (a lost +WPI only risks the redelivery it tried to prevent)
            return


_metrics_url: str | None = None
"""This process's metrics address, once served (in-process workers share one server)."""


def _serve_metrics(settings: Settings) -> str | None:
    global _metrics_url  # noqa: PLW0603  (one metrics server per process)
    if settings.metrics_port is None:
        return None
    if _metrics_url is None:
        _metrics_url = metrics.serve(settings.metrics_port, settings.metrics_host)
    return _metrics_url


def _num_pending(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_pending)
    except Exception:  # noqa: BLE001  (no metadata: assume nothing is waiting)
        return 0
