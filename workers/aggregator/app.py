"""Composition root of the aggregator worker."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import ConsumerSpec
from workers.aggregator.handlers import AggregatorHandlers
from workers.aggregator.persistence import AuditStore
from workers.runtime import Worker
from workers.settings import Settings


class AggregatorWorker(Worker):
    """A worker that owns a database engine and disposes of it on stop."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        super().__init__("aggregator", settings)
        self.engine = engine

    async def stop(self) -> None:
        await super().stop()
        await self.engine.dispose()


def build_aggregator(
    settings: Settings,
    engine: AsyncEngine,
    batch_size: int = 200,
    consumers: Sequence[ConsumerSpec] | None = None,
) -> AggregatorWorker:
    """``consumers`` replaces the durable consumers, e.g. to replay the streams from the start."""
    worker = AggregatorWorker(settings, engine)
    handlers = AggregatorHandlers(worker, AuditStore(engine))
    for spec in consumers or settings.subjects.aggregator_consumers():
        worker.subscribe_batch(spec, handlers.handler_for(spec), batch_size=batch_size)
    return worker
