"""The aggregator's I/O edge: decode a batch, persist it in one transaction, then ack.

Poison messages are dead-lettered one by one and the rest of the batch goes on. When the batch
transaction fails, each message is retried alone, so one bad row cannot hold back the others;
a message that keeps failing is naked with delay and finally dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from psycopg.errors import DataError, IntegrityError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from contracts import (
    ApprovalEvent,
    BrokerStatus,
    CancelReject,
    DeadLetterStage,
    ExecutionReport,
    FailoverEvent,
    Fill,
    IntentRefused,
    Message,
    ParentReport,
    PositionSnapshot,
    RouteDecision,
)
from workers.aggregator.persistence import AuditStore, Envelope
from workers.platform import metrics, telemetry
from workers.platform.bus import open_bucket
from workers.platform.runtime import PoisonMessage, Worker, parse
from workers.platform.topology import ConsumerSpec

if TYPE_CHECKING:
    from nats.aio.msg import Msg

log = structlog.get_logger("mbx.aggregator")

RETRY_FIRST, RETRY_MAX = 0.5, 5.0
"""Seconds between attempts to reach a database that is down: doubling from the first to the max."""

MODELS: dict[str, type[Message]] = {
    "routes": RouteDecision,
    "exec": ExecutionReport,
    "fills": Fill,
    "failover": FailoverEvent,
    "positions": PositionSnapshot,
    "status": BrokerStatus,
    "approvals": ApprovalEvent,
}


class AggregatorHandlers:
    def __init__(self, worker: Worker, store: AuditStore) -> None:
        self.worker = worker
        self.store = store
        self.health = AggregatorHealth(worker)

    def decode(self, msg: Msg) -> Envelope:
        kind = self.worker.subjects.kind(msg.subject)
        if kind == "exec" and self.worker.subjects.is_parent_report(msg.subject):
            return Envelope(msg.subject, parse(ParentReport, msg.data))
        if kind == "exec" and self.worker.subjects.is_cancel_reject(msg.subject):
            return Envelope(msg.subject, parse(CancelReject, msg.data))
        if kind == "exec" and self.worker.subjects.is_refusal(msg.subject):
            # The sender's answer only: never recorded against the intent id it names.
            return Envelope(msg.subject, parse(IntentRefused, msg.data))
        if kind == "exec" and self.worker.subjects.is_pending_approval(msg.subject):
            # The strategy's copy of a hold's pending step: stored once with the operators' copy.
            return Envelope(msg.subject, parse(ApprovalEvent, msg.data))
        model = MODELS.get(kind)
        if model is None:
            raise PoisonMessage(f"the aggregator has no handler for subject {msg.subject}")
        return Envelope(msg.subject, parse(model, msg.data))

    def handler_for(self, spec: ConsumerSpec) -> Callable[[list[Msg]], Awaitable[None]]:
        async def on_batch(msgs: list[Msg]) -> None:
            await self.persist_batch(spec, msgs)

        return on_batch

    async def persist_batch(self, spec: ConsumerSpec, msgs: list[Msg]) -> None:
        started = time.perf_counter()
        good: list[tuple[Msg, Envelope]] = []
        for msg in msgs:
            try:
                good.append((msg, self.decode(msg)))
            except PoisonMessage as exc:
                await self.worker.deliver(DeadLetterStage.AGGREGATOR, spec, msg, _raise(exc))
        if not good:
            return
        # One span per message, in its own trace, ended when its rows are committed.
        spans = [telemetry.start_child("persist", msg.headers, subject=msg.subject, batch=len(good)) for msg, _ in good]
        try:
            committing = time.perf_counter()
            applied = await self._apply_while_database_is_down(spec, good)
            metrics.COMMIT_SECONDS.observe(time.perf_counter() - committing)
            metrics.BATCH_SIZE.observe(len(good))
        except DatabaseUnavailable:
            return  # stopping: the batch stays unacked and is redelivered, nothing is lost
        except Exception as exc:  # noqa: BLE001  (isolate the failing message below)
            log.warning("batch failed, retrying one by one", size=len(good), error=f"{type(exc).__name__}: {exc}")
            for span in spans:
                telemetry.failed(span, exc)
            for msg, envelope in good:
                await self.worker.deliver(DeadLetterStage.AGGREGATOR, spec, msg, _apply_one(self.store, envelope))
            return
        finally:
            for span in spans:
                span.end()
        for msg, _ in good:
            await msg.ack()
        log.info(
            "batch persisted", size=len(good), new=applied, duration_ms=round((time.perf_counter() - started) * 1000, 2)
        )

    async def _apply_while_database_is_down(self, spec: ConsumerSpec, good: list[tuple[Msg, Envelope]]) -> int:
        """Apply the batch; while the database cannot be reached, hold the messages (in progress,
        so JetStream does not redeliver them meanwhile), retry with backoff, and say so."""
        delay, attempt = RETRY_FIRST, 0
        while True:
            try:
                applied = await within(self.store.apply([e for _, e in good]), self.worker.settings.db_timeout_s)
            except Exception as exc:
                if not database_unreachable(exc):
                    raise
                attempt += 1
                await self.health.down(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}", attempt, delay)
                if self.worker.stopping.is_set():
                    raise DatabaseUnavailable(str(exc)) from exc
                for msg, _ in good:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.worker.stopping.wait(), delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            await self.health.up()
            return applied


T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """Postgres cannot be reached and the worker is stopping."""


async def within(work: Awaitable[T], seconds: float) -> T:
    """``work``'s result, or TimeoutError after ``seconds``. Unlike ``asyncio.wait_for`` it does
    not wait for the abandoned call to finish cancelling: a hung database may never let it."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        task.add_done_callback(_swallow)
        raise TimeoutError(f"the database did not answer within {seconds:g}s")
    return task.result()


def _swallow(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def database_unreachable(exc: BaseException) -> bool:
    """True for a lost, refused or hung database connection (not for a bad row or a constraint)."""
    if isinstance(exc, TimeoutError):
        return True
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OSError | ConnectionError)


class AggregatorHealth:
    """The aggregator's state in the worker-status KV bucket (key ``aggregator``), written on
    every change and logged: ``ok``, or ``database_unavailable`` with the error and since when."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.state = "ok"
        self.since = datetime.now(UTC)
        self._kv: Any = None

    async def down(self, error: str, attempt: int, retry_in: float) -> None:
        log.warning("database unavailable; holding the batch", error=error, attempt=attempt, retry_in=retry_in)
        if self.state != "database_unavailable":
            self.state, self.since = "database_unavailable", datetime.now(UTC)
            await self._publish(error)

    async def started(self) -> None:
        """A (re)started aggregator says it is ok, replacing whatever a stopped one left."""
        self.state, self.since = "ok", datetime.now(UTC)
        await self._publish("")

    async def up(self) -> None:
        if self.state != "ok":
            log.info("database reachable again; catching up", down_for_s=(datetime.now(UTC) - self.since).seconds)
            self.state, self.since = "ok", datetime.now(UTC)
            await self._publish("")

    async def _publish(self, error: str) -> None:
        try:
            if self._kv is None:
                self._kv = await open_bucket(self.worker.js, self.worker.subjects.worker_status_bucket)
            value = {"state": self.state, "since": self.since.isoformat(), "error": error}
            await self._kv.put("aggregator", json.dumps(value).encode())
        except Exception as exc:  # noqa: BLE001  (the state is also in the log)
            log.warning("could not publish the aggregator's state", error=str(exc))


def _raise(exc: Exception) -> Callable[[Msg], Awaitable[str]]:
    async def process(_msg: Msg) -> str:
        raise exc

    return process


def _apply_one(store: AuditStore, envelope: Envelope) -> Callable[[Msg], Awaitable[str]]:
    async def process(_msg: Msg) -> str:
        try:
            applied = await store.apply([envelope])
        except DBAPIError as exc:
            if isinstance(exc.orig, DataError | IntegrityError):
                # The database refuses this row as it is (a value out of a column's range):
                # the same on every delivery, so it is dead-lettered at once.
                first_line = str(exc.orig).splitlines()[0][:300]
                raise PoisonMessage(
                    f"the database refuses this message: {type(exc.orig).__name__}: {first_line}"
                ) from exc
            raise
        return "persisted" if applied else "duplicate"

    return process
