"""Composition root of one broker's executor worker."""

from __future__ import annotations

from contracts import BrokerName
from workers.executor.handlers import ExecutorHandlers
from workers.runtime import Worker
from workers.settings import Settings
from workers.venues.base import Venue


class ExecutorWorker(Worker):
    """A worker that also connects its venue on start and disconnects it on stop."""

    def __init__(self, settings: Settings, venue: Venue) -> None:
        super().__init__(f"executor-{venue.broker}", settings)
        self.venue = venue

    async def start(self) -> None:
        await self.venue.connect()
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        await self.venue.disconnect()


def build_executor(settings: Settings, broker: BrokerName, venue: Venue) -> ExecutorWorker:
    worker = ExecutorWorker(settings, venue)
    spec = settings.subjects.executor_consumer(broker)
    handlers = ExecutorHandlers(worker, spec, venue)
    worker.subscribe(spec, handlers.on_route, batch_size=32)
    return worker
