"""The aggregator's I/O edge: decode a batch, persist it in one transaction, then ack.

Poison messages are dead-lettered one by one and the rest of the batch goes on. When the batch
transaction fails, each message is retried alone, so one bad row cannot hold back the others;
a message that keeps failing is naked with delay and finally dead-lettered.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from contracts import (
    CancelReject,
    ConsumerSpec,
    DeadLetterStage,
    ExecutionReport,
    FailoverEvent,
    Fill,
    Message,
    RouteDecision,
)
from workers.aggregator.persistence import AuditStore, Envelope
from workers.runtime import PoisonMessage, Worker, parse

if TYPE_CHECKING:
    from nats.aio.msg import Msg

log = structlog.get_logger("mbx.aggregator")

MODELS: dict[str, type[Message]] = {
    "routes": RouteDecision,
    "exec": ExecutionReport,
    "fills": Fill,
    "failover": FailoverEvent,
}


class AggregatorHandlers:
    def __init__(self, worker: Worker, store: AuditStore) -> None:
        self.worker = worker
        self.store = store

    def decode(self, msg: Msg) -> Envelope:
        kind = self.worker.subjects.kind(msg.subject)
        if kind == "exec" and msg.subject.endswith(".cancel_rejected"):
            return Envelope(msg.subject, parse(CancelReject, msg.data))
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
        try:
            applied = await self.store.apply([e for _, e in good])
        except Exception as exc:  # noqa: BLE001  (isolate the failing message below)
            log.warning("batch failed, retrying one by one", size=len(good), error=f"{type(exc).__name__}: {exc}")
            for msg, envelope in good:
                await self.worker.deliver(DeadLetterStage.AGGREGATOR, spec, msg, _apply_one(self.store, envelope))
            return
        for msg, _ in good:
            await msg.ack()
        log.info(
            "batch persisted", size=len(good), new=applied, duration_ms=round((time.perf_counter() - started) * 1000, 2)
        )


def _raise(exc: Exception) -> Callable[[Msg], Awaitable[str]]:
    async def process(_msg: Msg) -> str:
        raise exc

    return process


def _apply_one(store: AuditStore, envelope: Envelope) -> Callable[[Msg], Awaitable[str]]:
    async def process(_msg: Msg) -> str:
        applied = await store.apply([envelope])
        return "persisted" if applied else "duplicate"

    return process
