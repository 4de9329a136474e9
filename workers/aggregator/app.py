"""Composition root of the aggregator worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import ConsumerSpec, FillQuality
from workers.aggregator import quality
from workers.aggregator.handlers import AggregatorHandlers
from workers.aggregator.persistence import AuditStore
from workers.aggregator.portfolio import PortfolioAggregator
from workers.bus import open_bucket
from workers.router.state import EXPOSURE_KEY
from workers.runtime import Worker
from workers.settings import Settings

if TYPE_CHECKING:
    from nats.aio.msg import Msg

log = structlog.get_logger("mbx.aggregator")


EXPOSURE_INTERVAL = 2.0
"""Seconds between checks whether the exposure the router sees has changed."""
QUALITY_INTERVAL = 10.0
"""Seconds between measurements of execution quality (the router's fill scores)."""


class AggregatorWorker(Worker):
    """Persists what comes back, serves the portfolio over ``mbx.api.portfolio.*``, and keeps
    the router's exposure snapshot in KV current. Owns a database engine, disposed on stop."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        super().__init__("aggregator", settings)
        self.engine = engine
        self.portfolio = PortfolioAggregator(engine, settings.subjects, self._request)
        self._listeners: list[Any] = []
        self._timers: list[asyncio.Task[None]] = []
        self._published: bytes = b""

    async def _request(self, subject: str, payload: bytes, timeout: float) -> Any:
        return await self.broker.connection.request(subject, payload, timeout=timeout)

    async def prepare(self) -> None:
        nc = self.broker.connection
        api = self.subjects.api
        self._listeners = [
            await nc.subscribe(api("portfolio.unified"), queue="aggregator", cb=self._on_unified),
            await nc.subscribe(api("portfolio.exposure"), queue="aggregator", cb=self._on_exposure),
            await nc.subscribe(api("portfolio.allocation"), queue="aggregator", cb=self._on_allocation),
            await nc.subscribe(api("portfolio.sync"), queue="aggregator", cb=self._on_sync),
        ]
        self._timers = [
            asyncio.create_task(self._keep_exposure_current()),
            asyncio.create_task(self._keep_fill_quality_current()),
        ]

    async def cleanup(self) -> None:
        for sub in self._listeners:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for timer in self._timers:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer

    async def stop(self) -> None:
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

    async def _keep_exposure_current(self) -> None:
        while True:
            try:
                await self.publish_exposure()
            except Exception as exc:  # noqa: BLE001  (tried again next time; the router keeps the last one)
                log.warning("exposure not published", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(EXPOSURE_INTERVAL)

    async def publish_fill_quality(self) -> list[FillQuality]:
        """Measure every broker's execution quality and put it in KV as the router's fill score."""
        measured = await quality.measure(self.engine)
        kv = await open_bucket(self.js, self.subjects.fill_quality_bucket)
        for q in measured:
            await kv.put(str(q.broker), q.model_dump_json().encode())
        return measured

    async def _keep_fill_quality_current(self) -> None:
        while True:
            await asyncio.sleep(QUALITY_INTERVAL)
            try:
                await self.publish_fill_quality()
            except Exception as exc:  # noqa: BLE001  (tried again next time)
                log.warning("fill quality not published", error=f"{type(exc).__name__}: {exc}")

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
            request = json.loads(msg.data or b"{}")
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
    for spec in consumers or settings.subjects.aggregator_consumers():
        worker.subscribe_batch(spec, handlers.handler_for(spec), batch_size=batch_size)
    return worker
