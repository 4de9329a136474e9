"""Python client for strategy services.

This module needs ``nats-py`` (a dependency of the ``mbx`` package); the rest of ``contracts``
needs only pydantic. Any NATS client in any language can do the same from the AsyncAPI
document in ``contracts/schemas/asyncapi.yaml``.

    async with MbxClient.connect("nats://127.0.0.1:4222") as mbx:
        tracker = await mbx.track(intent.intent_id, intent.strategy_id)
        await mbx.submit(intent)
        outcome = await tracker.wait_or_held(timeout=10)  # an ExecutionReport, or an ApprovalEvent

An intent an approval rule matches (config ``approvals``) is held until operators decide: its
strategy hears of it as an ``ApprovalEvent`` (step ``pending``) on
``mbx.exec.unrouted.pending_approval.<strategy>``; the route decision and reports follow an
approval, a ``rejected`` report (``approval_denied``, ``approval_expired``) a denial or expiry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from contracts.enums import ApprovalStep
from contracts.messages import ApprovalEvent, CancelRequest, ExecutionReport, Fill, OrderIntent, RouteDecision
from contracts.subjects import INTENT_ID_HEADER, MSG_ID_HEADER, STRATEGY_ID_HEADER, Subjects

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.api import PubAck

M = TypeVar("M", bound=BaseModel)


RETRY_FOR_S = 60.0
"""How long a publish is sent again while the stream does not answer: a restarting server or a
cluster's leader election takes seconds. Far inside the ORDERS stream's duplicate window (an
hour), so a message that was stored after all is recognised and stored once."""
RETRY_PAUSE_S = (0.05, 0.5)
"""First and longest pause between two sends."""


def unavailable_errors() -> tuple[type[Exception], ...]:
    """What nats-py raises while NATS cannot serve a request yet (a server restarting, a
    reconnect, a cluster electing a stream's leader): worth asking again; nothing else is."""
    from nats.errors import ConnectionReconnectingError, NoRespondersError  # noqa: PLC0415  (kept out of ``import contracts``)
    from nats.errors import TimeoutError as NatsTimeoutError  # noqa: PLC0415
    from nats.js.errors import NoStreamResponseError, ServiceUnavailableError  # noqa: PLC0415

    return (
        NatsTimeoutError,
        NoStreamResponseError,
        ServiceUnavailableError,
        NoRespondersError,
        ConnectionReconnectingError,
    )


async def publish_retrying(
    js: JetStreamContext,
    subject: str,
    data: bytes,
    headers: dict[str, str],
    *,
    timeout: float = 5.0,
    retry_for: float = RETRY_FOR_S,
    refused: Callable[[], Exception | None] | None = None,
) -> PubAck:
    """Publish to JetStream and wait for its ack; after a timeout, "no response from stream" or
    "service unavailable", send the very same message again (same ``Nats-Msg-Id``, so JetStream
    stores it once) with a growing pause, until ``retry_for`` seconds have passed; then the last
    error is raised. nats-py retries none of these by itself. ``refused`` is asked after each
    failure: an error it returns (the server refused the publish) is raised at once instead."""
    return await sent_again(
        lambda: js.publish(subject, data, headers=headers, timeout=timeout),
        unavailable_errors(),
        retry_for,
        refused,
    )


async def sent_again(
    send: Callable[[], Awaitable[PubAck]],
    errors: tuple[type[Exception], ...],
    retry_for: float,
    refused: Callable[[], Exception | None] | None = None,
) -> PubAck:
    """``send()`` again, with a growing pause, while it fails with one of ``errors``, until
    ``retry_for`` seconds have passed (then the last error is raised); ``refused`` as in
    ``publish_retrying``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    pause = RETRY_PAUSE_S[0]
    while True:
        try:
            return await send()
        except errors:
            denial = refused() if refused is not None else None
            if denial is not None:
                raise denial from None
            if loop.time() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, RETRY_PAUSE_S[1])


@contextmanager
def _producer_span(name: str, intent_id: str, headers: dict[str, str]) -> Iterator[None]:
    """A PRODUCER span whose context goes into ``headers``; nothing without OpenTelemetry (an
    optional dependency of the client: its API does nothing until the strategy configures an
    SDK)."""
    try:
        from opentelemetry import propagate, trace  # noqa: PLC0415
    except ImportError:
        yield
        return
    tracer = trace.get_tracer("mbx.client")
    with tracer.start_as_current_span(name, kind=trace.SpanKind.PRODUCER, attributes={"intent_id": intent_id}):
        propagate.inject(headers)
        yield


class SubscribeDenied(PermissionError):
    """The server refused this connection's user reading a subject."""


class PublishDenied(PermissionError):
    """The server refused this connection's user the subject (its permissions do not allow it).
    Sent again it would be refused again: raised at once, with the server's words."""


@dataclass(frozen=True, slots=True)
class SubmitAck:
    """JetStream's acknowledgement of a published intent."""

    stream: str
    sequence: int
    duplicate: bool
    """True when JetStream already had this intent id: the intent is not queued twice."""


class IntentTracker:
    """Collects the route decisions and execution reports of one intent, and whether it is held
    for an operator's approval (``held``).

    Create it (``MbxClient.track``) before submitting, so nothing is missed.
    """

    def __init__(self, intent_id: str) -> None:
        self.intent_id = intent_id
        self.routes: list[RouteDecision] = []
        self.reports: list[ExecutionReport] = []
        self.held: ApprovalEvent | None = None
        """The ``pending`` step when an approval rule holds the intent (the rule, the approvers
        needed, when it expires); None while it is not held. Its route decision and reports come
        once operators approve it; a denial or expiry ends it with a ``rejected`` report."""
        self._terminal = asyncio.Event()
        self._held_or_terminal = asyncio.Event()
        self._subs: list[Any] = []

    def _on_route(self, route: RouteDecision) -> None:
        self.routes.append(route)

    def _on_report(self, report: ExecutionReport) -> None:
        self.reports.append(report)
        if report.final:
            self._terminal.set()
            self._held_or_terminal.set()

    def _on_held(self, event: ApprovalEvent) -> None:
        if event.step is ApprovalStep.PENDING:
            self.held = event
            self._held_or_terminal.set()

    @property
    def terminal(self) -> ExecutionReport | None:
        """The final report, once there is one."""
        return next((r for r in reversed(self.reports) if r.final), None)

    async def wait(self, timeout: float) -> ExecutionReport:
        """Wait for the final report; ``TimeoutError`` if none comes in time."""
        await asyncio.wait_for(self._terminal.wait(), timeout)
        report = self.terminal
        assert report is not None
        return report

    async def wait_or_held(self, timeout: float) -> ExecutionReport | ApprovalEvent:
        """The final report, or the ``pending`` ApprovalEvent when the intent is held for an
        operator's approval first; ``TimeoutError`` if neither comes in time. After a hold,
        ``wait`` follows the intent on to its final report (it comes once operators decide)."""
        await asyncio.wait_for(self._held_or_terminal.wait(), timeout)
        final = self.terminal
        if final is not None:
            return final
        assert self.held is not None  # the event is set by a final report or a hold
        return self.held

    async def close(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()


class BatchTracker:
    """The final report of each of many intents, as they arrive; or, for an intent held for an
    operator's approval, its ``pending`` ApprovalEvent (``held``): its final report comes only
    once operators decide, so it is not waited for."""

    def __init__(self, intent_ids: set[str]) -> None:
        self.waiting = set(intent_ids)
        self.finals: dict[str, ExecutionReport] = {}
        self.held: dict[str, ApprovalEvent] = {}
        self._all_done = asyncio.Event()
        self._subs: list[Any] = []
        if not self.waiting:
            self._all_done.set()

    def _on_report(self, report: ExecutionReport) -> None:
        if report.final and report.intent_id in self.waiting:
            self.finals[report.intent_id] = report
            self._done_with(report.intent_id)

    def _on_held(self, event: ApprovalEvent) -> None:
        if event.step is ApprovalStep.PENDING and event.intent_id in self.waiting:
            self.held[event.intent_id] = event
            self._done_with(event.intent_id)

    def _done_with(self, intent_id: str) -> None:
        self.waiting.discard(intent_id)
        if not self.waiting:
            self._all_done.set()

    async def wait(self, timeout: float) -> bool:
        """True when every intent has its final report (or is held for approval) within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._all_done.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()


def split_servers(url: str) -> list[str]:
    """``nats://a:4222,nats://b:4222`` -> both URLs (nats-py wants a list, not a joined string)."""
    return [part.strip() for part in url.split(",") if part.strip()]


async def server_has_read(nc: NatsClient) -> None:
    """Return once the server has read everything written on ``nc`` so far (a subscription is
    in place, or its refusal has reached the error callback).

    ``flush()`` alone does not promise that: nats-py queues a SUB for its flusher task but
    writes the flush's PING at once, so the PONG can come back before the server read the SUB.
    Letting the flusher run first puts the PING behind it."""
    await asyncio.sleep(0)
    await nc.flush()


class MbxClient:
    """Publish order intents and follow what happens to them."""

    def __init__(self, nc: NatsClient, subjects: Subjects | None = None, publish_timeout: float = 5.0) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=publish_timeout)
        self.subjects = subjects or Subjects()
        self.refusals: list[str] = []
        """What the server refused this connection (permission violations), newest last: nats-py
        reports them only to its error callback, which ``connect`` installs."""
        self._checks_refusals = False

    def _refused(self, subject: str) -> PublishDenied | None:
        quoted = f'"{subject}"'
        for text in reversed(self.refusals):
            if "publish" in text.lower() and quoted in text:
                return PublishDenied(
                    f"NATS refused this user publishing to {subject} ({text}); a strategy may publish only "
                    f"its own intents and cancels ({self.subjects.intent('<its id>')}), with its own credentials"
                )
        return None

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, url: str = "nats://127.0.0.1:4222", *, prefix: str = "mbx", **options: Any
    ) -> AsyncIterator[MbxClient]:
        """Connect to NATS; the connection is drained when the block ends. ``url`` may name
        several servers of a cluster, comma-separated."""
        import nats  # noqa: PLC0415  (kept out of ``import contracts``)

        theirs = options.pop("error_cb", None)
        refusals: list[str] = []

        async def on_error(exc: Exception) -> None:
            if "permissions violation" in str(exc).lower():
                refusals.append(str(exc))
            if theirs is not None:
                await theirs(exc)

        nc = await nats.connect(servers=split_servers(url), error_cb=on_error, **options)
        client = cls(nc, Subjects(prefix))
        client.refusals = refusals
        client._checks_refusals = True
        try:
            yield client
        finally:
            await nc.drain()

    async def submit(self, intent: OrderIntent, retry_for: float = RETRY_FOR_S) -> SubmitAck:
        """Publish an intent with its dedup header and wait for JetStream to store it; while
        the stream does not answer (a server restarting, a cluster electing the stream's
        leader) the same message is sent again for up to ``retry_for`` seconds
        (``publish_retrying``).

        With OpenTelemetry configured in the strategy, the publish is a PRODUCER span of the
        strategy's current trace, carried in the W3C ``traceparent`` header: mbx's router,
        executor and aggregator continue that trace."""
        subject = self.subjects.intent(intent.strategy_id)
        headers = {
            MSG_ID_HEADER: intent.intent_id,
            INTENT_ID_HEADER: intent.intent_id,
            STRATEGY_ID_HEADER: intent.strategy_id,
        }
        with _producer_span(f"submit {subject}", intent.intent_id, headers):
            ack = await publish_retrying(
                self._js,
                subject,
                intent.model_dump_json().encode(),
                headers,
                retry_for=retry_for,
                refused=lambda: self._refused(subject),
            )
        return SubmitAck(stream=ack.stream, sequence=ack.seq, duplicate=bool(ack.duplicate))

    async def cancel(self, intent_id: str, strategy_id: str, reason: str = "") -> SubmitAck:
        """Ask mbx to cancel the working order of ``intent_id`` (published as ``strategy_id``, the
        intent's own strategy). The outcome is a ``cancelled`` report, or a ``cancel_rejected``
        one saying why (already filled, unknown): follow it with ``track``."""
        subject = self.subjects.cancel(strategy_id)
        request = CancelRequest(
            message_id=f"cancel-{intent_id}",
            correlation_id=intent_id,
            intent_id=intent_id,
            strategy_id=strategy_id,
            reason=reason,
        )
        headers = {MSG_ID_HEADER: request.message_id, INTENT_ID_HEADER: intent_id, STRATEGY_ID_HEADER: strategy_id}
        ack = await publish_retrying(
            self._js, subject, request.model_dump_json().encode(), headers, refused=lambda: self._refused(subject)
        )
        return SubmitAck(stream=ack.stream, sequence=ack.seq, duplicate=bool(ack.duplicate))

    def _results(self, strategy_id: str | None) -> tuple[str, str]:
        """Route and report subjects to follow: one strategy's (all a strategy's user may read),
        or every strategy's (an operator)."""
        if strategy_id is None:
            return f"{self.subjects.prefix}.routes.>", f"{self.subjects.prefix}.exec.>"
        routes, reports, _ = self.subjects.results_of(strategy_id)
        return routes, reports

    async def track(self, intent_id: str, strategy_id: str | None = None) -> IntentTracker:
        """Start following one intent's routes, reports and hold for approval (call before
        ``submit``). Give the intent's ``strategy_id`` when connected as that strategy: its user
        may read only its own."""
        tracker = IntentTracker(intent_id)
        routes, reports = self._results(strategy_id)

        def matches(msg: Msg) -> bool:
            return (msg.headers or {}).get(INTENT_ID_HEADER) == intent_id

        tracker._subs.append(await self._subscribe(routes, RouteDecision, tracker._on_route, matches))
        tracker._subs.append(await self._subscribe(reports, ExecutionReport, tracker._on_report, matches))
        held = self.subjects.pending_approval(strategy_id or "*")
        tracker._subs.append(await self._subscribe(held, ApprovalEvent, tracker._on_held, matches))
        return tracker

    async def track_many(self, intent_ids: Iterable[str], strategy_id: str | None = None) -> BatchTracker:
        """Follow the final reports of many intents, and their holds for approval, with one
        subscription each (call before submitting)."""
        tracker = BatchTracker(set(intent_ids))
        _, reports = self._results(strategy_id)

        def matches(msg: Msg) -> bool:
            return (msg.headers or {}).get(INTENT_ID_HEADER) in tracker.waiting

        tracker._subs.append(await self._subscribe(reports, ExecutionReport, tracker._on_report, matches))
        held = self.subjects.pending_approval(strategy_id or "*")
        tracker._subs.append(await self._subscribe(held, ApprovalEvent, tracker._on_held, matches))
        return tracker

    async def submit_and_wait(self, intent: OrderIntent, timeout: float = 30.0) -> IntentTracker:
        """Submit an intent and wait for its terminal report."""
        tracker = await self.track(intent.intent_id, intent.strategy_id)
        try:
            await self.submit(intent)
            await tracker.wait(timeout)
        finally:
            await tracker.close()
        return tracker

    async def subscribe_strategy(
        self,
        strategy_id: str,
        *,
        on_route: Callable[[RouteDecision], Any] | None = None,
        on_report: Callable[[ExecutionReport], Any] | None = None,
        on_fill: Callable[[Fill], Any] | None = None,
        on_held: Callable[[ApprovalEvent], Any] | None = None,
    ) -> list[Any]:
        """Live routes, reports and fills of one strategy (core NATS: from now on, no replay);
        ``on_held`` hears of each of its intents an approval rule holds (the ``pending``
        ApprovalEvent: rule, approvers needed, expiry).

        Returns the subscriptions; unsubscribe them when done.
        """

        def matches(msg: Msg) -> bool:
            return (msg.headers or {}).get(STRATEGY_ID_HEADER) == strategy_id

        subs = []
        routes, reports, fills = self.subjects.results_of(strategy_id)
        if on_route:
            subs.append(await self._subscribe(routes, RouteDecision, on_route, matches))
        if on_report:
            subs.append(await self._subscribe(reports, ExecutionReport, on_report, matches))
        if on_fill:
            subs.append(await self._subscribe(fills, Fill, on_fill, matches))
        if on_held:
            subs.append(
                await self._subscribe(self.subjects.pending_approval(strategy_id), ApprovalEvent, on_held, matches)
            )
        return subs

    async def _subscribe(
        self, subject: str, model: type[M], callback: Callable[[M], Any], matches: Callable[[Msg], bool]
    ) -> Any:
        async def handle(msg: Msg) -> None:
            if not matches(msg):
                return
            try:
                result = callback(model.model_validate_json(msg.data))
            except ValidationError:
                return  # Not ours to judge: the workers dead-letter bad messages.
            if asyncio.iscoroutine(result):
                await result

        sub = await self._nc.subscribe(subject, cb=handle)
        if self._checks_refusals:
            # A refused subscription is told only to the error callback, and then nothing ever
            # arrives: wait for the server's word and say so plainly.
            await server_has_read(self._nc)
            quoted = f'subscription to "{subject}"'
            if any(quoted in text.lower() for text in self.refusals):
                await sub.unsubscribe()
                raise SubscribeDenied(
                    f"NATS refused this user reading {subject}; a strategy may read only its own results: "
                    "pass its strategy_id (track(intent_id, strategy_id), submit_and_wait does)"
                )
        return sub

    async def __aenter__(self) -> MbxClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._nc.drain()
