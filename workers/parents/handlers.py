"""The parent-order worker's I/O edge: parent intents and cancels (forwarded by the router), and
the execution reports of their children. Each is journalled, then acked; the scheduler does the
rest from the journal."""

from __future__ import annotations

import asyncio
import contextlib
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

import structlog

from contracts import INTENT_ID_HEADER, CancelRequest, DeadLetterStage, ExecutionReport, OrderIntent
from workers.domain.reports import cancel_reject
from workers.parents.journal import ParentJournal
from workers.parents.record import new_record
from workers.parents.scheduler import Scheduler
from workers.parents.steps import with_cancel, with_report
from workers.platform.bus import publish, stored_at
from workers.platform.runtime import PoisonMessage, RetryLater, StillPending, Worker, parse
from workers.platform.topology import ARRIVAL_PRICE_HEADER

if TYPE_CHECKING:
    from nats.aio.msg import Msg

log = structlog.get_logger("mbx.parents")

STAGE = DeadLetterStage.PARENTS
CHILD_ID = re.compile(r":[0-9]{1,3}\.[0-9]{1,2}\Z")
"""The end of every child id (``workers.domain.parents.child_id``): reports of other intents are
passed over without reading them."""
PARENT_PENDING_S = 0.2
"""Seconds before a cancel that arrived before its parent was journalled is looked at again."""


class ParentHandlers:
    def __init__(self, worker: Worker, journal: ParentJournal, scheduler: Scheduler) -> None:
        self.worker = worker
        self.journal = journal
        self.scheduler = scheduler
        topology = worker.settings.topology
        self.orders_spec = topology.parents_consumer()
        self.progress_spec = topology.parents_progress_consumer()

    # Parents and their cancels ------------------------------------------------------------------

    async def on_order(self, msg: Msg) -> None:
        await self.worker.deliver(STAGE, self.orders_spec, msg, self.take_order)

    async def take_order(self, msg: Msg) -> str:
        subjects = self.worker.subjects
        if subjects.is_parent_intent(msg.subject):
            return await self.accept(msg)
        if subjects.is_parent_cancel(msg.subject):
            return await self.cancel(msg)
        raise PoisonMessage(f"{msg.subject} is neither a parent order nor a parent's cancel")

    async def accept(self, msg: Msg) -> str:
        """Journal a new parent (its arrival, arrival price and schedule), then ack: from then on
        the journal holds it, whatever happens to this worker."""
        parent = parse(OrderIntent, msg.data)
        structlog.contextvars.bind_contextvars(intent_id=parent.intent_id)
        _same_strategy(msg.subject, parent.strategy_id)
        if parent.execution is None:
            raise PoisonMessage(f"intent {parent.intent_id} has no execution block: it is not a parent order")
        record, _ = await self.journal.read(parent.intent_id)
        outcome = "known"
        if record is None:
            # The stream's own time: the same at every delivery, so a redelivery plans the same schedule.
            arrived = stored_at(msg) or datetime.now(UTC)
            if not await self.journal.create(new_record(parent, arrived, _arrival_price(msg))):
                record, _ = await self.journal.read(parent.intent_id)
                if record is None:
                    raise RetryLater(f"the journal entry of parent {parent.intent_id} is not readable yet")
            outcome = "accepted"
        await self.journal.activate(parent.intent_id)
        self.scheduler.poke(parent.intent_id)
        return outcome

    async def cancel(self, msg: Msg) -> str:
        """Record a parent's cancel; the scheduler drops its unsent slices and cancels every child
        working. A cancel for a parent that has ended is answered ``too_late_to_cancel``."""
        request = parse(CancelRequest, msg.data)
        structlog.contextvars.bind_contextvars(intent_id=request.intent_id)
        _same_strategy(msg.subject, request.strategy_id)
        record, _ = await self.journal.read(request.intent_id)
        if record is None:
            # Forwarded only once the router forwarded the parent, which is then on its way here.
            raise StillPending(f"parent {request.intent_id} is not journalled yet", PARENT_PENDING_S)
        if record.parent.strategy_id != request.strategy_id:
            why = f"intent {request.intent_id} belongs to another strategy; a strategy cancels only its own"
            return await self._refuse(request, "not_your_order", why)
        if record.final:
            return await self._refuse(request, "too_late_to_cancel", f"parent {request.intent_id} has ended")
        reason = request.reason or "cancel requested"
        await self.scheduler.change(
            request.intent_id, lambda r: None if r.final or r.cancel_requested else with_cancel(r, reason)
        )
        self.scheduler.poke(request.intent_id)
        return "cancelling"

    async def _refuse(self, request: CancelRequest, code: str, why: str) -> str:
        await publish(
            self.worker.js,
            self.worker.subjects.cancel_reject(None, request.strategy_id),
            cancel_reject(request, None, code, why),
            intent_id=request.intent_id,
            strategy_id=request.strategy_id,
        )
        return f"cancel_rejected:{code}"

    # Children's reports ---------------------------------------------------------------------------

    async def on_progress(self, msgs: list[Msg]) -> None:
        """A batch of execution reports: those that may be a child's are handled under the delivery
        policy, the others (most of them) acked at once, unread."""
        children = []
        for msg in msgs:
            if self._maybe_child(msg):
                children.append(msg)
            else:
                with contextlib.suppress(Exception):  # not acked: redelivered, and passed over again
                    await msg.ack()
        await asyncio.gather(*(self.worker.deliver(STAGE, self.progress_spec, m, self.progress) for m in children))

    def _maybe_child(self, msg: Msg) -> bool:
        subjects = self.worker.subjects
        if subjects.is_parent_report(msg.subject) or subjects.is_cancel_reject(msg.subject):
            return False
        if subjects.is_refusal(msg.subject) or subjects.is_pending_approval(msg.subject):
            return False  # not an execution report (a held child's report comes once it is decided)
        return CHILD_ID.search((msg.headers or {}).get(INTENT_ID_HEADER, "")) is not None

    async def progress(self, msg: Msg) -> str:
        """Record a child's report in its parent's record, and have the scheduler look at the
        parent (a report may end a slice, the parent, or its cancel)."""
        report = parse(ExecutionReport, msg.data)
        structlog.contextvars.bind_contextvars(intent_id=report.intent_id)
        parent_id = self.scheduler.parent_of.get(report.intent_id) or await self.journal.parent_of(report.intent_id)
        if parent_id is None:
            return "not_a_child"
        changed = await self.scheduler.change(parent_id, lambda r: None if r.final else with_report(r, report))
        if changed:
            self.scheduler.poke(parent_id)
        return "child_progress" if changed else "child_progress:no_news"


def _same_strategy(subject: str, strategy_id: str) -> None:
    """Only the router forwards here, on the subject of the strategy it checked: a body naming
    another is a defect upstream, never to be acted on."""
    if subject.rsplit(".", 1)[-1] != strategy_id:
        raise PoisonMessage(f"strategy_id {strategy_id!r} does not match the subject {subject}")


def _arrival_price(msg: Msg) -> Decimal | None:
    raw = (msg.headers or {}).get(ARRIVAL_PRICE_HEADER, "")
    try:
        price = Decimal(raw) if raw else None
    except InvalidOperation:
        log.warning("arrival price header unreadable; the parent has none", value=raw[:40])
        return None
    return price if price is not None and price.is_finite() and price > 0 else None
