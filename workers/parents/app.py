"""Composition root of the parent-order worker."""

from __future__ import annotations

from collections.abc import Sequence

from workers.parents.handlers import ParentHandlers
from workers.parents.journal import ParentJournal
from workers.parents.scheduler import Scheduler
from workers.parents.steps import REMAINDER_RETRIES_S
from workers.platform.runtime import Worker
from workers.platform.settings import Settings
from workers.platform.split_api import SplitAnswer, SplitRequest

SPLIT_TIMEOUT_S = 5.0
"""Seconds the router has to answer a split request (it prices the symbol and decides in
milliseconds; more means it is busy or away, and the slice is asked for again shortly)."""


class ParentWorker(Worker):
    """Parent orders: journalled on arrival, sliced and split, each child sent as an ordinary intent
    the router routes, followed to the end through the children's reports."""

    def __init__(self, settings: Settings, remainder_retries: Sequence[float] = REMAINDER_RETRIES_S) -> None:
        super().__init__("parents", settings)
        self.journal = ParentJournal(lambda: self.js, settings.topology.parents_bucket)
        self.scheduler = Scheduler(self, self.journal, self.request_split, remainder_retries)
        self.handlers = ParentHandlers(self, self.journal, self.scheduler)

    async def prepare(self) -> None:
        await self.scheduler.rescan()  # every parent a previous run left active is looked at now
        self.background(self.scheduler.run, "parent scheduling")

    async def reconnected(self) -> None:
        """NATS is back (perhaps a restarted server that lost its latest writes): look at every
        active parent again rather than trust what was read before."""
        await self.scheduler.rescan()

    async def request_split(self, request: SplitRequest) -> SplitAnswer:
        """Ask the router how to share a slice; no answer raises (NATS' no-responders or timeout:
        a condition that passes)."""
        reply = await self.broker.connection.request(
            self.subjects.route_split, request.model_dump_json().encode(), timeout=SPLIT_TIMEOUT_S
        )
        return SplitAnswer.model_validate_json(reply.data)


def build_parents(settings: Settings, remainder_retries: Sequence[float] = REMAINDER_RETRIES_S) -> ParentWorker:
    """The parent-order worker; ``remainder_retries``: seconds between the tries to place what no
    broker could take of a slice (tests shorten them)."""
    worker = ParentWorker(settings, remainder_retries)
    worker.subscribe(worker.handlers.orders_spec, worker.handlers.on_order, batch_size=16)
    worker.subscribe_batch(worker.handlers.progress_spec, worker.handlers.on_progress, batch_size=64)
    return worker
