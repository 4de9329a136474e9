"""What is due in a parent's record, and how each step of the work changes it. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from contracts import BrokerName, ExecutionReport, OrderStatus
from workers.domain.parents import MAX_PARTS, child_id
from workers.parents.record import ZERO, ChildRecord, ParentRecord, SliceRecord

REMAINDER_RETRIES_S: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
"""Seconds after which what no broker could take of a slice is planned again, try after try; after
the last, it is dropped and the parent ends short of it, saying why."""
CANCEL_AGAIN_S = 10.0
"""Seconds after which a cancel is sent again to a child of a cancelled parent still working (the
first may have reached the router before the child did)."""
RESEND_UNCONFIRMED_S = 10.0
"""Seconds after which a child sent and never reported on is sent again, the same message: a no-op
when the stream or the router has it (the same id), and the child itself when a nats-server that
restarted lost it (one that fsyncs lazily can lose messages it acknowledged)."""


# What is due ------------------------------------------------------------------------------------


def work_due(record: ParentRecord, now: datetime) -> list[int]:
    """The slices with something to do at ``now``, in order: children planned and not sent yet, or
    quantity to plan. A slice sent after the previous one (an iceberg's) is due only once that one
    has ended; a TWAP slice at its time (at once, when that passed while nobody was looking)."""
    if record.cancel_requested or record.final:
        return []
    due = []
    for position, slice_ in enumerate(record.slices):
        if slice_.after_previous and not record.slices[position - 1].ended:
            break
        if slice_.due_at is not None and slice_.due_at > now:
            break  # slices are in time order
        if slice_.unsent or (slice_.open > 0 and (slice_.retry_at is None or slice_.retry_at <= now)):
            due.append(slice_.number)
    return due


def next_wake(record: ParentRecord, now: datetime) -> datetime | None:
    """The next time something falls due by the clock alone (a slice's time, a remainder's retry, a
    cancel to send again); None when only news (a child's report, a cancel) can move it."""
    times: list[datetime] = []
    if record.final:
        return None
    if record.cancel_requested:
        times += [
            c.cancelled_at + timedelta(seconds=CANCEL_AGAIN_S)
            for _, c in record.children
            if c.cancelled_at is not None and c.sent and not c.ended
        ]
    else:
        times += [
            c.sent_at + timedelta(seconds=RESEND_UNCONFIRMED_S)
            for _, c in record.children
            if c.sent_at is not None and c.status is None and not c.withdrawn
        ]
        for slice_ in record.slices:
            if slice_.open > 0 and slice_.retry_at is not None:
                times.append(slice_.retry_at)
            elif slice_.open > 0 and slice_.due_at is not None and not slice_.after_previous:
                times.append(slice_.due_at)
    later = [t for t in times if t > now]
    if len(later) < len(times):
        return now
    return min(later, default=None)


# Changes ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Share:
    """A child to plan: its broker (None: the router chooses) and quantity, and why."""

    broker: BrokerName | None
    quantity: Decimal
    reason: str = ""


def with_plan(
    record: ParentRecord,
    number: int,
    shares: Sequence[Share],
    *,
    left_reason: str,
    now: datetime,
    retries: Sequence[float] = REMAINDER_RETRIES_S,
) -> ParentRecord:
    """Slice ``number`` with ``shares`` planned as its next children (parts after those it has). What
    is still open is tried again after the next of ``retries``, or, past the last, dropped saying
    ``left_reason``."""
    slice_ = record.slices[number]
    first = len(slice_.children)
    shares = [s for s in shares if s.quantity > 0][: max(MAX_PARTS - first, 0)]
    children = tuple(
        ChildRecord(
            intent_id=child_id(record.intent_id, number, first + k),
            part=first + k,
            quantity=share.quantity,
            broker=share.broker,
            split_reason=share.reason,
        )
        for k, share in enumerate(shares)
    )
    planned = slice_.model_copy(update={"children": slice_.children + children, "planned_at": now, "retry_at": None})
    left = planned.open
    if left > 0:
        tries = slice_.tries + 1
        if tries > len(retries) or first + len(shares) >= MAX_PARTS:
            why = left_reason or "no broker took it"
            dropped = {
                "dropped": planned.dropped + left,
                "drop_reason": f"{left} not placed after {tries} tries: {why}",
            }
            planned = planned.model_copy(update={"tries": tries, **dropped})
        else:
            retry_at = now + timedelta(seconds=retries[tries - 1])
            planned = planned.model_copy(update={"tries": tries, "retry_at": retry_at})
    return _with_slice(record, planned)


def with_sent(record: ParentRecord, number: int, sent: Sequence[str], at: datetime | None = None) -> ParentRecord:
    """Children of slice ``number`` marked sent (JetStream acknowledged them) ``at`` that time."""
    slice_ = record.slices[number]
    update = {"sent": True, "sent_at": at}
    children = tuple(c.model_copy(update=update) if c.intent_id in sent else c for c in slice_.children)
    return _with_slice(record, slice_.model_copy(update={"children": children}))


def resends_due(record: ParentRecord, now: datetime) -> list[tuple[SliceRecord, ChildRecord]]:
    """Children sent ``RESEND_UNCONFIRMED_S`` ago or more with no report since: to send again."""
    if record.cancel_requested or record.final:
        return []
    return [
        (s, c)
        for s, c in record.children
        if c.sent_at is not None
        and c.status is None
        and not c.withdrawn
        and c.sent_at + timedelta(seconds=RESEND_UNCONFIRMED_S) <= now
    ]


def with_report(record: ParentRecord, report: ExecutionReport) -> ParentRecord | None:
    """The record with a child's report, or None when it says nothing new (not a child of this
    parent, or older than the report already kept: an earlier attempt, or an earlier sequence)."""
    found = record.child(report.intent_id)
    if found is None:
        return None
    slice_, child = found
    if (report.attempt, report.report_seq) <= (child.attempt, child.report_seq) and child.status is not None:
        return None
    updated = child.model_copy(
        update={
            "status": report.status,
            "final": report.final,
            "attempt": report.attempt,
            "report_seq": report.report_seq,
            "routed_to": report.broker or child.routed_to,
            "filled": report.filled_quantity,
            "average_price": report.average_price,
            "reason": report.reason[:200] if report.status in (OrderStatus.REJECTED, OrderStatus.FAILED) else "",
            # A child that reports was sent, whatever the record said (a send cut short by a crash).
            "sent": True,
        }
    )
    children = tuple(updated if c.intent_id == child.intent_id else c for c in slice_.children)
    return _with_slice(record, slice_.model_copy(update={"children": children}))


def with_cancel(record: ParentRecord, reason: str) -> ParentRecord:
    """A cancel asked for: nothing more is planned or sent, and every child working is to be
    cancelled (``cancels_due``)."""
    dropped = drop_unsent(record, "cancelled")
    return dropped.model_copy(update={"cancel_requested": True, "cancel_reason": reason})


def drop_unsent(record: ParentRecord, why: str) -> ParentRecord:
    """What is not planned yet dropped (saying ``why``), and children planned but not known to be
    sent withdrawn (each still gets one cancel, in case its send went out before a crash)."""
    slices = []
    for slice_ in record.slices:
        children = tuple(c.model_copy(update={"withdrawn": True}) if not c.sent else c for c in slice_.children)
        open_ = slice_.model_copy(update={"children": children}).open
        update: dict[str, object] = {"children": children, "retry_at": None}
        if open_ > 0:
            update |= {"dropped": slice_.dropped + open_, "drop_reason": slice_.drop_reason or why}
        slices.append(slice_.model_copy(update=update))
    return record.model_copy(update={"slices": tuple(slices)})


def cancels_due(record: ParentRecord, now: datetime) -> list[ChildRecord]:
    """Children to send a cancel to now: every withdrawn one once, and, once the parent is being
    cancelled, every one sent and still working (again every ``CANCEL_AGAIN_S``)."""
    due = []
    for _, child in record.children:
        if child.withdrawn and child.cancels == 0:
            due.append(child)
        elif record.cancel_requested and child.sent and not child.ended:
            last = child.cancelled_at
            if last is None or last + timedelta(seconds=CANCEL_AGAIN_S) <= now:
                due.append(child)
    return due


def with_cancels_sent(record: ParentRecord, sent: Sequence[str], now: datetime) -> ParentRecord:
    slices = []
    for slice_ in record.slices:
        children = tuple(
            c.model_copy(update={"cancels": c.cancels + 1, "cancelled_at": now}) if c.intent_id in sent else c
            for c in slice_.children
        )
        slices.append(slice_.model_copy(update={"children": children}))
    return record.model_copy(update={"slices": tuple(slices)})


def unconfirmed(record: ParentRecord) -> dict[BrokerName, Decimal]:
    """Per broker, this parent's children sent there that no report has confirmed yet."""
    waiting: dict[BrokerName, Decimal] = {}
    for _, child in record.children:
        if child.sent and child.status is None and child.broker is not None:
            waiting[child.broker] = waiting.get(child.broker, ZERO) + child.quantity
    return waiting


def _with_slice(record: ParentRecord, slice_: SliceRecord) -> ParentRecord:
    slices = tuple(slice_ if s.number == slice_.number else s for s in record.slices)
    return record.model_copy(update={"slices": slices})
