"""Composition root of the aggregator worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import FillQuality
from workers.aggregator.handlers import AggregatorHandlers, AggregatorHealth
from workers.aggregator.persistence import AuditStore
from workers.aggregator.portfolio import PortfolioAggregator
from workers.domain.keys import EXPOSURE_KEY
from workers.platform import metrics
from workers.platform.bus import open_bucket, read_json
from workers.platform.runtime import Worker
from workers.platform.settings import Settings
from workers.platform.topology import ConsumerSpec
from workers.readmodel import quality

if TYPE_CHECKING:
    from nats.aio.msg import Msg

log = structlog.get_logger("mbx.aggregator")


EXPOSURE_INTERVAL = 2.0
"""Seconds between checks whether the exposure the router sees has changed."""
PRUNE_INTERVAL = 3600.0
"""Seconds between prunings of the inbox (see ``INBOX_RETENTION``)."""
QUALITY_INTERVAL = 10.0
"""Seconds between measurements of execution quality (the router's fill scores)."""


class AggregatorWorker(Worker):
    """Persists what comes back, serves the portfolio over ``mbx.api.portfolio.*``, and keeps
    the router's exposure snapshot in KV current. Owns a database engine, disposed on stop."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        super().__init__("aggregator", settings)
        self.engine = engine
        self.portfolio = PortfolioAggregator(engine, settings.subjects, self._request)
        self._published: bytes = b""
        self._first_sync: asyncio.Task[None] | None = None
        self.health: AggregatorHealth | None = None

    async def _request(self, subject: str, payload: bytes, timeout: float) -> Any:
        return await self.broker.connection.request(subject, payload, timeout=timeout)

    async def prepare(self) -> None:
        if self.health is not None:
            await self.health.started()
        if self.metrics_url and self.settings.nats_monitor_url:
            metrics.watch_nats_server(self.settings.nats_monitor_url)
        api = self.subjects.api
        await self.listen(api("portfolio.unified"), self._on_unified, queue="aggregator")
        await self.listen(api("portfolio.exposure"), self._on_exposure, queue="aggregator")
        await self.listen(api("portfolio.allocation"), self._on_allocation, queue="aggregator")
        await self.listen(api("portfolio.sync"), self._on_sync, queue="aggregator")
        await self._publish_exposure_logged()
        # The executors publish account snapshots every 30 s: ask them now, so the router knows
        # each account's buying power and positions from the start, not half a minute later.
        self._first_sync = asyncio.create_task(self._sync_accounts(), name="aggregator:first account sync")
        self.every(EXPOSURE_INTERVAL, self.publish_exposure, "exposure publishing")
        self.every(QUALITY_INTERVAL, self.publish_fill_quality, "fill quality publishing")
        self.every(PRUNE_INTERVAL, self.prune_inbox, "inbox pruning")

    async def prune_inbox(self) -> int:
        deleted = await self.portfolio.store.prune_inbox()
        if deleted:
            log.info("inbox pruned", deleted=deleted)
        return deleted

    async def _sync_accounts(self) -> None:
        try:
            outcome = await self.portfolio.sync_all()
            await self.publish_exposure()
        except Exception as exc:  # noqa: BLE001  (the executors' own snapshots follow within 30 s)
            log.warning("first account sync failed", error=f"{type(exc).__name__}: {exc}")
        else:
            log.info("accounts synced", **{str(b): v for b, v in outcome.items()})

    async def _publish_exposure_logged(self) -> None:
        try:
            await self.publish_exposure()
        except Exception as exc:  # noqa: BLE001  (the timer tries again; the router keeps the last one)
            log.warning("exposure not published", error=f"{type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        if self._first_sync is not None:
            self._first_sync.cancel()
            await asyncio.gather(self._first_sync, return_exceptions=True)
        await super().stop()
        await self.engine.dispose()

    async def publish_exposure(self) -> bool:
        """Put the exposure snapshot in KV if it changed; True when it was written."""
        snapshot = await self.portfolio.exposure_snapshot()
        if snapshot is None:
            return False
        fingerprint = snapshot.model_dump_json(exclude={"message_id"}).encode()
        if fingerprint == self._published:
            return False
        kv = await open_bucket(self.js, self.subjects.exposure_bucket)
        await kv.put(EXPOSURE_KEY, snapshot.model_dump_json().encode())
        self._published = fingerprint
        return True

    async def publish_fill_quality(self) -> list[FillQuality]:
        """Measure every broker's execution quality and put it in KV as the router's fill score."""
        measured = await quality.measure(self.engine)
        kv = await open_bucket(self.js, self.subjects.fill_quality_bucket)
        for q in measured:
            await kv.put(str(q.broker), q.model_dump_json().encode())
        return measured

    async def _answer(self, msg: Msg, work: Callable[[], Awaitable[BaseModel | dict[str, Any]]]) -> None:
        try:
            result = await work()
            reply = result.model_dump_json() if isinstance(result, BaseModel) else json.dumps(result, default=str)
        except Exception as exc:  # noqa: BLE001  (the asker gets the reason, not a timeout)
            reply = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
        if msg.reply:
            await msg.respond(reply.encode())

    async def _on_unified(self, msg: Msg) -> None:
        await self._answer(msg, self.portfolio.get_unified_portfolio)

    async def _on_exposure(self, msg: Msg) -> None:
        async def exposure() -> BaseModel | dict[str, Any]:
            request = read_json(msg.data or b"{}")
            symbol = request.get("symbol") if isinstance(request, dict) else None
            if not isinstance(symbol, str) or not symbol:
                return {"error": 'send {"symbol": "<symbol>"}'}
            return await self.portfolio.get_cross_broker_exposure(symbol)

        await self._answer(msg, exposure)

    async def _on_allocation(self, msg: Msg) -> None:
        async def allocation() -> dict[str, Any]:
            return {str(b): str(v) for b, v in (await self.portfolio.get_broker_allocation()).items()}

        await self._answer(msg, allocation)

    async def _on_sync(self, msg: Msg) -> None:
        async def sync() -> dict[str, Any]:
            return {str(b): v for b, v in (await self.portfolio.sync_all()).items()}

        await self._answer(msg, sync)


def build_aggregator(
    settings: Settings,
    engine: AsyncEngine,
    batch_size: int = 500,
    consumers: Sequence[ConsumerSpec] | None = None,
) -> AggregatorWorker:
    """``consumers`` replaces the durable consumers, e.g. to replay the streams from the start."""
    worker = AggregatorWorker(settings, engine)
    handlers = AggregatorHandlers(worker, AuditStore(engine))
    worker.health = handlers.health
    for spec in consumers or settings.topology.aggregator_consumers():
        worker.subscribe_batch(spec, handlers.handler_for(spec), batch_size=batch_size)
    return worker
