"""A parent order's journal record. Pure: no I/O.

The record is the truth about a parent: its schedule, every child planned (with the id, broker and
quantity it will always be sent with), whether each was sent, the latest report of each, whether a
cancel was asked for, and the last report published. The worker reads it, asks ``steps`` what is
due, does it, and writes the record back with compare-and-set.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict

from contracts import BrokerName, OrderIntent, OrderStatus
from workers.domain.parents import ChildProgress, schedule

ZERO = Decimal(0)


class ChildRecord(BaseModel):
    """One child: how it is sent (fixed when planned), whether it was, and its latest report."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    intent_id: str
    part: int
    quantity: Decimal
    broker: BrokerName | None = None
    """The broker the split gave it (sent as the child's preference), or the parent's preference."""
    split_reason: str = ""
    sent: bool = False
    sent_at: datetime | None = None
    withdrawn: bool = False
    """Dropped by a cancel before it was known to be sent: ended, unless a report says otherwise."""
    status: OrderStatus | None = None
    final: bool = False
    attempt: int = 0
    report_seq: int = 0
    routed_to: BrokerName | None = None
    filled: Decimal = ZERO
    average_price: Decimal | None = None
    reason: str = ""
    cancels: int = 0
    cancelled_at: datetime | None = None

    @property
    def fully_filled(self) -> bool:
        """Its whole quantity filled, whatever the status of the report that said so: an executor
        reports an order that filled at once as accepted with its fill, then as filled, and the
        second report may come late (redelivered after a crash) or after the parent has ended."""
        return self.quantity > 0 and self.filled >= self.quantity

    @property
    def reported_status(self) -> OrderStatus | None:
        """The latest report's status, or ``filled`` once the whole quantity is."""
        return OrderStatus.FILLED if self.status is not None and self.fully_filled else self.status

    @property
    def ended(self) -> bool:
        """No more fills will come: a final terminal report, the whole quantity filled, or
        withdrawn and never reported."""
        if self.status is None:
            return self.withdrawn
        return (self.status.is_terminal and self.final) or self.fully_filled

    @property
    def progress(self) -> ChildProgress:
        if self.ended:
            status = self.reported_status or OrderStatus.CANCELLED
        elif self.status is None or self.status.is_terminal:
            # Not sent, no report yet, or a rejection that fails over to the next broker: working.
            status = OrderStatus.NEW
        else:
            status = self.status
        return ChildProgress(status, self.filled, self.average_price)


class SliceRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    number: int
    quantity: Decimal
    due_at: datetime | None = None
    after_previous: bool = False
    children: tuple[ChildRecord, ...] = ()
    planned_at: datetime | None = None
    """When its latest children were planned: their ``created_at``, the same at every send."""
    tries: int = 0
    retry_at: datetime | None = None
    dropped: Decimal = ZERO
    drop_reason: str = ""

    @property
    def open(self) -> Decimal:
        """What of the slice is neither planned nor dropped."""
        return self.quantity - sum((c.quantity for c in self.children), ZERO) - self.dropped

    @property
    def unsent(self) -> tuple[ChildRecord, ...]:
        return tuple(c for c in self.children if not c.sent and not c.withdrawn)

    @property
    def ended(self) -> bool:
        """Nothing more will be planned, sent or filled in this slice."""
        return self.open <= 0 and all(c.ended for c in self.children)


class ParentRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    parent: OrderIntent
    arrived_at: datetime
    arrival_price: Decimal | None = None
    slices: tuple[SliceRecord, ...] = ()
    problem: str = ""
    """Why the parent could not be planned at all (it then has no slices and ends short)."""
    cancel_requested: bool = False
    cancel_reason: str = ""
    report_seq: int = 0
    reported: str = ""
    """The fingerprint of the last report published."""
    final: bool = False

    @property
    def intent_id(self) -> str:
        return self.parent.intent_id

    @property
    def children(self) -> list[tuple[SliceRecord, ChildRecord]]:
        return [(s, c) for s in self.slices for c in s.children]

    @property
    def more_to_send(self) -> bool:
        return not self.cancel_requested and any(s.open > 0 or s.unsent for s in self.slices)

    def child(self, intent_id: str) -> tuple[SliceRecord, ChildRecord] | None:
        return next(((s, c) for s, c in self.children if c.intent_id == intent_id), None)


def new_record(parent: OrderIntent, arrived_at: datetime, arrival_price: Decimal | None) -> ParentRecord:
    """The record of a parent at its arrival: its slices, nothing planned yet."""
    try:
        slices = schedule(parent, arrived_at)
    except ValueError as exc:
        return ParentRecord(parent=parent, arrived_at=arrived_at, arrival_price=arrival_price, problem=str(exc))
    return ParentRecord(
        parent=parent,
        arrived_at=arrived_at,
        arrival_price=arrival_price,
        slices=tuple(
            SliceRecord(number=s.number, quantity=s.quantity, due_at=s.due_at, after_previous=s.after_previous)
            for s in slices
        ),
    )
