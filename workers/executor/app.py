"""Composition root of one broker's executor worker, and its heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from contracts import BrokerName, BrokerStatus
from workers.bus import open_bucket
from workers.executor.handlers import ExecutorHandlers
from workers.runtime import Worker
from workers.settings import Settings
from workers.venues.base import Venue
from workers.venues.book import KvOrderBook
from workers.venues.simulated import SimulatedVenue

log = structlog.get_logger("mbx.executor")

HEARTBEAT_INTERVAL = 1.0


class ExecutorWorker(Worker):
    """Connects its venue, and reports the broker's health to the status KV bucket every second
    (and once more, as disconnected, when it stops)."""

    def __init__(self, settings: Settings, venue: Venue) -> None:
        super().__init__(f"executor-{venue.broker}", settings)
        self.venue = venue
        self.handlers = ExecutorHandlers(self, settings.subjects.executor_consumer(venue.broker), venue)
        self._heartbeat: asyncio.Task[None] | None = None
        self._status_kv: Any = None

    async def start(self) -> None:
        await self.venue.connect()
        await super().start()

    async def prepare(self) -> None:
        self._status_kv = await open_bucket(self.js, self.subjects.status_bucket)
        await self.beat()
        self._heartbeat = asyncio.create_task(self._beat_forever())

    async def cleanup(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        with contextlib.suppress(Exception):
            await self.beat(connected=False)

    async def stop(self) -> None:
        await super().stop()
        await self.venue.disconnect()

    def status(self, connected: bool | None = None) -> BrokerStatus:
        stats = self.handlers.stats
        return BrokerStatus(
            correlation_id=str(self.venue.broker),
            broker=self.venue.broker,
            connected=self.venue.is_connected if connected is None else connected,
            latency_ms=round(stats.latency_ms, 3),
            error_rate=round(stats.error_rate, 4),
            rate_limit_headroom=1.0,
        )

    async def beat(self, connected: bool | None = None) -> None:
        await self._status_kv.put(str(self.venue.broker), self.status(connected).model_dump_json().encode())

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                await self.beat()
            except Exception as exc:  # noqa: BLE001  (a missed beat is retried next second)
                log.warning("heartbeat failed", broker=str(self.venue.broker), error=str(exc))


def build_simulated_executor(
    settings: Settings, broker: BrokerName, venue: SimulatedVenue | None = None
) -> ExecutorWorker:
    """An executor with a simulated broker whose book lives in NATS KV, so it outlives the
    executor process and is shared by its replicas, like a real broker's."""
    venue = venue or SimulatedVenue(broker)
    worker = build_executor(settings, broker, venue)
    venue.book = KvOrderBook(lambda: worker.js, settings.subjects.sim_book_bucket(broker))
    return worker


def build_executor(settings: Settings, broker: BrokerName, venue: Venue) -> ExecutorWorker:
    worker = ExecutorWorker(settings, venue)
    worker.subscribe(settings.subjects.executor_consumer(broker), worker.handlers.on_route, batch_size=32)
    return worker
