"""What a parent's record says to the outside: its children as intents, and its state as a
``ParentReport``. Pure: no I/O."""

from __future__ import annotations

import hashlib

from contracts import (
    CancelRequest,
    ChildOrder,
    OrderIntent,
    OrderStatus,
    ParentReport,
    ParentStatus,
)
from contracts.messages import METADATA_MAX_KEYS, METADATA_MAX_TOTAL, METADATA_MAX_VALUE_LENGTH
from workers.domain.parents import PARENT_KEY, SLICE_KEY, SPLIT_KEY, ParentState, parent_state
from workers.parents.record import ChildRecord, ParentRecord, SliceRecord

PLANNED = "planned"
"""A child's status in a report before it is known to be sent."""
REASON_MAX = 500


def child_intent(record: ParentRecord, slice_: SliceRecord, child: ChildRecord) -> OrderIntent:
    """The intent ``child`` is sent as, every time: built from the record alone, so any send of it
    is the same message (and JetStream keeps only the first)."""
    parent = record.parent
    ours = {PARENT_KEY: parent.intent_id, SLICE_KEY: str(slice_.number)}
    if child.split_reason:
        ours[SPLIT_KEY] = child.split_reason[:METADATA_MAX_VALUE_LENGTH]
    metadata = {**parent.metadata, **ours}
    if len(metadata) > METADATA_MAX_KEYS or sum(len(k) + len(v) for k, v in metadata.items()) > METADATA_MAX_TOTAL:
        metadata = ours  # the parent's own tags leave no room for ours: ours identify the child
    return OrderIntent(
        intent_id=child.intent_id,
        strategy_id=parent.strategy_id,
        symbol=parent.symbol,
        asset_class=parent.asset_class,
        side=parent.side,
        quantity=child.quantity,
        order_type=parent.order_type,
        limit_price=parent.limit_price,
        stop_price=parent.stop_price,
        time_in_force=parent.time_in_force,
        broker=child.broker,
        position_effect=parent.position_effect,
        metadata=metadata,
        created_at=slice_.planned_at or record.arrived_at,
    )


def child_cancel(record: ParentRecord, child: ChildRecord) -> CancelRequest:
    """The cancel of a child, numbered by how many were sent before (a repeat is a new message)."""
    return CancelRequest(
        message_id=f"parent-cancel-{child.intent_id}-{child.cancels + 1}",
        correlation_id=child.intent_id,
        intent_id=child.intent_id,
        strategy_id=record.parent.strategy_id,
        reason=(
            f"parent {record.intent_id} cancelled: {record.cancel_reason}"
            if record.cancel_requested
            else f"parent {record.intent_id} no longer sends it"
        )[:500],
    )


def state_of(record: ParentRecord) -> ParentState:
    return parent_state(
        record.parent,
        {c.intent_id: c.progress for _, c in record.children},
        arrival_price=record.arrival_price,
        more_to_send=record.more_to_send,
        cancel_requested=record.cancel_requested,
    )


def report_of(record: ParentRecord, seq: int) -> ParentReport:
    """The parent's report numbered ``seq``: its state over every child."""
    state = state_of(record)
    parent = record.parent
    assert parent.quantity is not None  # a parent always gives a quantity (the contract says so)
    return ParentReport(
        message_id=f"parent-report-{record.intent_id}-{seq}",
        correlation_id=record.intent_id,
        intent_id=record.intent_id,
        strategy_id=parent.strategy_id,
        symbol=parent.symbol,
        side=parent.side,
        status=state.status,
        quantity=parent.quantity,
        execution=parent.execution,
        filled_quantity=state.filled_quantity,
        average_price=state.average_price,
        arrival_price=record.arrival_price,
        slippage_bps=state.slippage_bps,
        children=tuple(
            ChildOrder(
                intent_id=c.intent_id,
                broker=c.routed_to or c.broker,
                slice_number=s.number,
                quantity=c.quantity,
                filled_quantity=c.filled,
                status=str(c.reported_status or OrderStatus.NEW) if c.sent else PLANNED,
            )
            for s, c in record.children
        ),
        reason=_reason(record, state.status),
        report_seq=seq,
        final=state.final,
    )


def fingerprint(report: ParentReport) -> str:
    """What a report says, without its number and time: a report is published when this changes."""
    said = report.model_dump_json(exclude={"message_id", "created_at", "report_seq"})
    return hashlib.sha256(said.encode()).hexdigest()[:32]


def _reason(record: ParentRecord, status: ParentStatus) -> str:
    if status is ParentStatus.CANCELLED:
        why = f"cancelled: {record.cancel_reason}" if record.cancel_reason else "cancelled"
    elif status is ParentStatus.DONE_WITH_SHORTFALL:
        parts = [record.problem] if record.problem else []
        parts += [f"slice {s.number}: {s.drop_reason}" for s in record.slices if s.dropped > 0]
        parts += [f"{c.intent_id} {c.status}: {c.reason}" for _, c in record.children if c.ended and c.reason]
        ended_short = [c.intent_id for _, c in record.children if c.ended and c.filled < c.quantity and not c.reason]
        if ended_short:
            parts.append(f"ended short without a reason given: {', '.join(ended_short[:5])}")
        why = "; ".join(parts) or "the children filled less than the quantity"
    else:
        return ""
    return why if len(why) <= REASON_MAX else why[: REASON_MAX - 3] + "..."
