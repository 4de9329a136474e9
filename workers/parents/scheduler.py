"""Works each active parent from its journal record: plans the slices that are due, sends their
children, cancels what a cancel asks for, and publishes the parent's report when it changes.

One ``advance`` of a parent reads its record, does what is due, and writes each step back with
compare-and-set before the next; a child is planned (journalled with its id) before it is sent and
marked sent after JetStream acknowledged it. The in-memory schedule only says when to look next: a
worker started afresh looks at every active parent at once (``rescan``), so a slice that fell due
while no worker ran goes out then, and the rest at their times.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import structlog

from workers.parents.journal import Conflict, ParentJournal
from workers.parents.record import ChildRecord, ParentRecord, SliceRecord
from workers.parents.reporting import child_cancel, child_intent, fingerprint, report_of
from workers.parents.steps import (
    REMAINDER_RETRIES_S,
    Share,
    cancels_due,
    drop_unsent,
    next_wake,
    resends_due,
    unconfirmed,
    with_cancels_sent,
    with_plan,
    with_sent,
    work_due,
)
from workers.platform.bus import publish, publish_checked
from workers.platform.runtime import RetryLater, Verdict, Worker, disposition
from workers.platform.split_api import SplitAnswer, SplitRequest

log = structlog.get_logger("mbx.parents")

TICK_S = 1.0
"""Longest the scheduler sleeps without news: it wakes earlier for the next slice due."""
RESCAN_S = 5.0
"""How often every active parent in the journal is looked at, whoever took it (a replica that died
left its parents to the others)."""
GIVE_UP_AFTER = 5
"""Unexpected failures in a row after which a parent stops sending and ends short, saying why."""
MAX_CAS_TRIES = 20

Splitter = Callable[[SplitRequest], Awaitable[SplitAnswer]]


def now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    def __init__(
        self, worker: Worker, journal: ParentJournal, split: Splitter, retries: Sequence[float] = REMAINDER_RETRIES_S
    ) -> None:
        self.worker = worker
        self.journal = journal
        self.split = split
        self.retries = tuple(retries)
        self.parent_of: dict[str, str] = {}
        """Child id -> parent id, for the children of the parents this worker has looked at."""
        self._next: dict[str, datetime] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}
        self._failures: dict[str, int] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._rescan_at = 0.0

    def lock(self, parent_id: str) -> asyncio.Lock:
        """One writer of a parent's record at a time in this process (other processes are kept
        apart by compare-and-set)."""
        return self._locks.setdefault(parent_id, asyncio.Lock())

    def poke(self, parent_id: str) -> None:
        """Look at the parent as soon as possible (news arrived)."""
        self._dirty.add(parent_id)
        self._wake.set()

    async def change(self, parent_id: str, update: Callable[[ParentRecord], ParentRecord | None]) -> bool:
        """Apply ``update`` to the parent's record with compare-and-set, again when another writer
        got there first; False when there is no record or ``update`` changes nothing."""
        async with self.lock(parent_id):
            for _ in range(MAX_CAS_TRIES):
                record, revision = await self.journal.read(parent_id)
                changed = None if record is None else update(record)
                if changed is None:
                    return False
                try:
                    await self.journal.write(changed, revision)
                except Conflict:
                    continue
                return True
        raise RetryLater(f"the record of parent {parent_id} kept changing under this write")

    async def rescan(self) -> None:
        """Look at every active parent in the journal now."""
        for parent_id in await self.journal.active():
            self._dirty.add(parent_id)
        self._rescan_at = time.monotonic() + RESCAN_S
        self._wake.set()

    async def run(self) -> None:
        """Until the worker stops: start an ``advance`` for every parent due (one at a time per
        parent), then sleep until the next is due or news arrives."""
        try:
            while not self.worker.stopping.is_set():
                if time.monotonic() >= self._rescan_at:
                    try:
                        await self.rescan()
                    except Exception as exc:  # noqa: BLE001  (the bus is away: scanned again next time)
                        self._rescan_at = time.monotonic() + RESCAN_S
                        log.warning("journal scan failed", error=f"{type(exc).__name__}: {exc}")
                self._start_due()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._sleep())
                self._wake.clear()
        finally:
            for task in self._running.values():
                task.cancel()
            if self._running:
                await asyncio.wait(list(self._running.values()), timeout=2.0)

    def _sleep(self) -> float:
        waiting = [at for p, at in self._next.items() if p not in self._running]
        until = (min(waiting, default=now() + timedelta(seconds=TICK_S)) - now()).total_seconds()
        return min(max(until, 0.0), TICK_S, max(self._rescan_at - time.monotonic(), 0.0))

    def _start_due(self) -> None:
        current = now()
        due = set(self._dirty) | {p for p, at in self._next.items() if at <= current}
        for parent_id in due:
            if parent_id in self._running:
                continue  # looked at again when the running look ends (it stays due)
            self._dirty.discard(parent_id)
            self._next.pop(parent_id, None)
            task = asyncio.create_task(self._look(parent_id), name=f"parents:advance:{parent_id}")
            self._running[parent_id] = task

    async def _look(self, parent_id: str) -> None:
        try:
            wake_at = await self.advance(parent_id)
        except asyncio.CancelledError:
            raise
        except Conflict:
            self._dirty.add(parent_id)  # another writer changed it: read it again at once
        except Exception as exc:  # noqa: BLE001  (classified below, like a failed delivery)
            await self._failed(parent_id, exc)
        else:
            self._failures.pop(parent_id, None)
            if wake_at is not None:
                self._next[parent_id] = wake_at
        finally:
            self._running.pop(parent_id, None)
            self._wake.set()

    async def _failed(self, parent_id: str, exc: Exception) -> None:
        """A failed look, classified as a failed delivery is: a condition that passes (the bus,
        the router not answering, brokers starting) is waited out uncounted; anything else is
        counted, and after ``GIVE_UP_AFTER`` in a row (at once for one that can never succeed) the
        parent stops sending and ends short, saying why, rather than fail for ever."""
        failures = self._failures.get(parent_id, 0) + 1
        verdict = disposition(exc, failures)
        error = f"{type(exc).__name__}: {exc}"
        if verdict.verdict in (Verdict.UNEXPECTED, Verdict.POISON):
            self._failures[parent_id] = failures
            if verdict.verdict is Verdict.POISON or failures >= GIVE_UP_AFTER:
                with contextlib.suppress(Exception):  # not recorded: tried again at the next failure
                    await self.change(parent_id, lambda r: None if r.final else drop_unsent(r, f"mbx gave up: {error}"))
        log.warning(
            "parent look failed",
            intent_id=parent_id,
            verdict=str(verdict.verdict),
            error=error,
            failures=failures,
            retry_in_s=round(verdict.delay, 3),
        )
        self._next[parent_id] = now() + timedelta(seconds=verdict.delay)

    def _forget(self, parent_id: str) -> None:
        self._next.pop(parent_id, None)
        self._failures.pop(parent_id, None)
        self._locks.pop(parent_id, None)

    async def advance(self, parent_id: str) -> datetime | None:
        """Do everything due for the parent now; when to look again (None: on news only)."""
        async with self.lock(parent_id):
            record, revision = await self.journal.read(parent_id)
            if record is None or record.final:
                if record is not None:
                    await self.journal.retire(parent_id)
                self._forget(parent_id)
                return None
            for _, child in record.children:
                self.parent_of[child.intent_id] = parent_id
            record, revision = await self._cancel(record, revision)
            record, revision = await self._resend(record, revision)
            for number in work_due(record, now()):
                record, revision = await self._work(record, revision, record.slices[number])
            record, revision = await self._report(record, revision)
            if record.final:
                await self.journal.retire(parent_id)
                self._forget(parent_id)
                for _, child in record.children:
                    self.parent_of.pop(child.intent_id, None)
                return None
            return next_wake(record, now())

    async def _cancel(self, record: ParentRecord, revision: int) -> tuple[ParentRecord, int]:
        """Send the cancels due (a cancelled parent's working children, withdrawn children)."""
        at = now()
        due = cancels_due(record, at)
        if not due:
            return record, revision
        strategy = record.parent.strategy_id
        subject = self.worker.subjects.cancel(strategy)
        await asyncio.gather(
            *(
                publish(self.worker.js, subject, child_cancel(record, c), intent_id=c.intent_id, strategy_id=strategy)
                for c in due
            )
        )
        record = with_cancels_sent(record, [c.intent_id for c in due], at)
        return record, await self.journal.write(record, revision)

    async def _resend(self, record: ParentRecord, revision: int) -> tuple[ParentRecord, int]:
        """Send again, unchanged, the children sent a while ago that nothing has reported on."""
        due = resends_due(record, now())
        if not due:
            return record, revision
        await self._publish_children(record, due)
        at = now()
        for slice_, child in due:
            record = with_sent(record, slice_.number, [child.intent_id], at)
        log.info("unconfirmed children sent again", intent_id=record.intent_id, children=[c.intent_id for _, c in due])
        return record, await self.journal.write(record, revision)

    async def _publish_children(
        self, record: ParentRecord, children: Sequence[tuple[SliceRecord, ChildRecord]]
    ) -> None:
        strategy = record.parent.strategy_id
        subject = self.worker.subjects.intent(strategy)
        await asyncio.gather(
            *(
                publish(
                    self.worker.js, subject, child_intent(record, s, c), intent_id=c.intent_id, strategy_id=strategy
                )
                for s, c in children
            )
        )

    async def _work(self, record: ParentRecord, revision: int, slice_: SliceRecord) -> tuple[ParentRecord, int]:
        """Plan what of the slice is open (journalled before anything is sent), then send what is
        planned and not sent, then mark it sent."""
        if not slice_.unsent:
            shares, why = await self._shares(record, slice_)
            planned = with_plan(record, slice_.number, shares, left_reason=why, now=now(), retries=self.retries)
            known = {c.intent_id for c in slice_.children}
            fresh = [c.intent_id for c in planned.slices[slice_.number].children if c.intent_id not in known]
            await self.journal.index(fresh, record.intent_id)
            for child in fresh:
                self.parent_of[child] = record.intent_id
            record, revision = planned, await self.journal.write(planned, revision)
            slice_ = record.slices[slice_.number]
        unsent = slice_.unsent
        if not unsent:
            return record, revision
        await self._publish_children(record, [(slice_, c) for c in unsent])
        log.info("slice sent", intent_id=record.intent_id, slice=slice_.number, children=[c.intent_id for c in unsent])
        record = with_sent(record, slice_.number, [c.intent_id for c in unsent], now())
        return record, await self.journal.write(record, revision)

    async def _shares(self, record: ParentRecord, slice_: SliceRecord) -> tuple[list[Share], str]:
        """How the slice's open quantity is shared: by the router's split rule for a parent that
        splits, else one child that the router routes like any intent."""
        parent = record.parent
        if parent.execution is None or parent.execution.split is None:
            return [Share(parent.broker, slice_.open)], ""
        request = SplitRequest(
            parent=parent, slice_number=slice_.number, quantity=slice_.open, unconfirmed=unconfirmed(record)
        )
        answer = await self.split(request)
        if answer.error:
            raise RuntimeError(f"the router refused the split request: {answer.error}")
        if answer.retry_after_s > 0:
            raise RetryLater("brokers that could take the slice are starting or unsure", answer.retry_after_s)
        shares = [Share(c.broker, c.quantity, _reason_for(str(c.broker), answer.reasons)) for c in answer.children]
        return shares, answer.unallocated_reason

    async def _report(self, record: ParentRecord, revision: int) -> tuple[ParentRecord, int]:
        """Publish the parent's report when what it says changed. Its message id is the parent's id
        and the report's number; a number already taken by other content (published before a
        crash, never journalled) is skipped, so no report is lost to deduplication."""
        seq = record.report_seq + 1
        report = report_of(record, seq)
        said = fingerprint(report)
        if said == record.reported:
            return record, revision
        subject = self.worker.subjects.parent_report(report.status, record.parent.strategy_id)
        while await publish_checked(
            self.worker.js, subject, report, intent_id=record.intent_id, strategy_id=record.parent.strategy_id
        ):
            seq += 1
            report = report_of(record, seq)
        record = record.model_copy(update={"report_seq": seq, "reported": said, "final": report.final})
        return record, await self.journal.write(record, revision)


def _reason_for(broker: str, reasons: Sequence[str]) -> str:
    """The split's reason for the share ``broker`` got."""
    return next((r for r in reasons if r.startswith(f"{broker}: ") and ": nothing:" not in r), "")
