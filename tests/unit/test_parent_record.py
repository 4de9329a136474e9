"""The parent-order worker's journal record (``workers.parents.record`` and ``reporting``): what is due
when, how planning, sending, reports and a cancel change the record, and what the parent reports.
Pure functions: no bus, no clock but the one passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import BrokerName, ExecutionReport, OrderIntent, OrderStatus, ParentStatus
from contracts.messages import METADATA_MAX_KEYS
from tests.builders import make_intent
from workers.domain.parents import child_id
from workers.parents.journal import decode_record, encode_record
from workers.parents.record import ParentRecord, new_record
from workers.parents.reporting import PLANNED, child_intent, fingerprint, report_of, state_of
from workers.parents.steps import (
    CANCEL_AGAIN_S,
    RESEND_UNCONFIRMED_S,
    Share,
    cancels_due,
    next_wake,
    resends_due,
    unconfirmed,
    with_cancel,
    with_cancels_sent,
    with_plan,
    with_report,
    with_sent,
    work_due,
)

T0 = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
A, IB, S = BrokerName.ALPACA, BrokerName.IBKR, BrokerName.SCHWAB


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def twap(quantity: str = "100", slices: int = 10, duration_s: float = 10, **fields: Any) -> ParentRecord:
    intent = make_intent(quantity=quantity, execution={"twap": {"duration_s": duration_s, "slices": slices}}, **fields)
    return new_record(intent, T0, Decimal(100))


def iceberg(quantity: str = "30", display: str = "10", **fields: Any) -> ParentRecord:
    intent = make_intent(quantity=quantity, execution={"iceberg": {"display_quantity": display}}, **fields)
    return new_record(intent, T0, Decimal(100))


def sent(record: ParentRecord, number: int, *shares: Share, now: datetime = T0) -> ParentRecord:
    """Slice ``number`` planned as ``shares`` (one child of all of it by default) and sent."""
    planned = with_plan(record, number, shares or [Share(None, record.slices[number].open)], left_reason="", now=now)
    return with_sent(planned, number, [c.intent_id for c in planned.slices[number].unsent])


def report(record: ParentRecord, child: str, status: OrderStatus, filled: str = "0", **fields: Any) -> ParentRecord:
    intent = record.parent
    message = ExecutionReport(
        intent_id=child,
        strategy_id=intent.strategy_id,
        broker=fields.pop("broker", A),
        status=status,
        symbol=intent.symbol,
        asset_class=intent.asset_class,
        side=intent.side,
        filled_quantity=Decimal(filled),
        average_price=fields.pop("price", Decimal(101) if Decimal(filled) else None),
        **{"report_seq": 1, "final": status.is_terminal, **fields},
    )
    changed = with_report(record, message)
    assert changed is not None
    return changed


# What is due ------------------------------------------------------------------------------------


def test_a_twap_slice_is_due_at_its_time_and_those_missed_are_all_due_at_once() -> None:
    """At arrival only slice 0 is due; 3.5 s later, with nothing sent (the worker was down), slices 0 to 3
    are due together, and the next wake is slice 4's time."""
    record = twap()
    assert work_due(record, T0) == [0]
    assert work_due(record, at(3.5)) == [0, 1, 2, 3]
    record = sent(sent(record, 0), 1)
    assert work_due(record, at(3.5)) == [2, 3]
    assert next_wake(record, at(3.5)) == at(3.5)  # slices 2 and 3 are late: now
    assert next_wake(sent(sent(record, 2), 3), at(3.5)) == at(4)


def test_an_iceberg_slice_is_due_only_once_the_previous_one_has_ended() -> None:
    """Slice 1 waits while slice 0 works, and while it fails over (a rejection that is not final); a
    final fill ends slice 0 and slice 1 is due, the clock having no say."""
    record = sent(iceberg(), 0)
    first = child_id(record.intent_id, 0, 0)
    assert work_due(record, at(60)) == []
    assert next_wake(record, T0) is None
    record = report(record, first, OrderStatus.REJECTED, final=False, reason="venue said no")
    assert work_due(record, at(60)) == []
    record = report(record, first, OrderStatus.FILLED, "10", attempt=2, broker=IB, final=True)
    assert work_due(record, T0) == [1]


def test_planned_children_not_sent_are_due_again_with_the_same_ids() -> None:
    """A crash between journalling a plan and sending leaves the children planned: the slice is due,
    and it sends those very children rather than planning new ones."""
    record = twap()
    planned = with_plan(record, 0, [Share(A, Decimal(6)), Share(S, Decimal(4))], left_reason="", now=T0)
    assert work_due(planned, T0) == [0]
    ids = [c.intent_id for c in planned.slices[0].unsent]
    assert ids == [child_id(record.intent_id, 0, 0), child_id(record.intent_id, 0, 1)]
    assert work_due(with_sent(planned, 0, ids), T0) == []


# Planning what no broker took -------------------------------------------------------------------


def test_a_remainder_is_tried_again_then_dropped_and_the_parent_ends_short_saying_why() -> None:
    split = make_intent(quantity="100", execution={"split": {}})
    record = new_record(split, T0, None)
    record = with_plan(record, 0, [Share(A, Decimal(60))], left_reason="ibkr is full", now=T0, retries=(1.0, 2.0))
    assert (record.slices[0].open, record.slices[0].retry_at) == (40, at(1))
    assert work_due(record, at(0.5)) == [0]  # the 60 planned are not sent yet
    record = with_sent(record, 0, [child_id(record.intent_id, 0, 0)])
    assert work_due(record, at(0.5)) == [] and work_due(record, at(1)) == [0]
    record = with_plan(record, 0, [Share(IB, Decimal(15))], left_reason="ibkr is full", now=at(1), retries=(1.0, 2.0))
    assert record.slices[0].retry_at == at(3)
    assert record.slices[0].children[-1].intent_id == child_id(record.intent_id, 0, 1)  # a new part
    record = with_sent(record, 0, [child_id(record.intent_id, 0, 1)])
    record = with_plan(record, 0, [], left_reason="ibkr is full", now=at(3), retries=(1.0, 2.0))
    assert (record.slices[0].open, record.slices[0].dropped) == (0, 25)
    assert not record.more_to_send
    for part in (0, 1):
        record = report(record, child_id(record.intent_id, 0, part), OrderStatus.FILLED, "60" if part == 0 else "15")
    parent_report = report_of(record, 1)
    assert parent_report.status is ParentStatus.DONE_WITH_SHORTFALL and parent_report.final
    assert parent_report.filled_quantity == 75
    assert "25 not placed after 3 tries: ibkr is full" in parent_report.reason


@settings(max_examples=80, deadline=None)
@given(plans=st.lists(st.lists(st.integers(1, 40), max_size=3), min_size=1, max_size=6))
def test_a_slice_never_plans_more_than_its_quantity(plans: list[list[int]]) -> None:
    """Whatever the shares offered try after try (trimmed to what is open), planned + dropped + open
    is the slice's quantity, and each child id is new."""
    record = new_record(make_intent(quantity="50", execution={"split": {}}), T0, None)
    for k, offered in enumerate(plans):
        open_ = record.slices[0].open
        if open_ <= 0:
            break
        shares = []
        for units in offered:
            take = min(Decimal(units), open_ - sum((s.quantity for s in shares), Decimal(0)))
            if take > 0:
                shares.append(Share(A, take))
        record = with_plan(record, 0, shares, left_reason="full", now=at(k), retries=(1.0,) * 3)
    slice_ = record.slices[0]
    assert sum((c.quantity for c in slice_.children), Decimal(0)) + slice_.dropped + slice_.open == 50
    assert len({c.intent_id for c in slice_.children}) == len(slice_.children)


# Reports ----------------------------------------------------------------------------------------


def test_an_older_report_never_overwrites_a_newer_one() -> None:
    record = sent(twap(), 0)
    child = child_id(record.intent_id, 0, 0)
    record = report(record, child, OrderStatus.PARTIALLY_FILLED, "4", report_seq=3)
    assert with_report(record, _report(record, child, OrderStatus.ACCEPTED, report_seq=2)) is None
    assert with_report(record, _report(record, "someone-else:0.0", OrderStatus.FILLED)) is None
    newer = with_report(record, _report(record, child, OrderStatus.FILLED, filled="10", report_seq=4))
    assert newer is not None and newer.slices[0].children[0].filled == 10


def _report(record: ParentRecord, child: str, status: OrderStatus, filled: str = "0", **fields: Any) -> ExecutionReport:
    intent = record.parent
    return ExecutionReport(
        intent_id=child,
        strategy_id=intent.strategy_id,
        broker=A,
        status=status,
        symbol=intent.symbol,
        asset_class=intent.asset_class,
        side=intent.side,
        filled_quantity=Decimal(filled),
        **fields,
    )


def test_the_report_weighs_fills_across_children_and_tells_planned_from_sent() -> None:
    record = sent(twap(), 0)
    record = with_plan(record, 1, [Share(S, Decimal(10))], left_reason="", now=at(1))
    record = report(record, child_id(record.intent_id, 0, 0), OrderStatus.FILLED, "10", price=Decimal(102))
    made = report_of(record, 7)
    assert (made.status, made.filled_quantity, made.average_price) == (ParentStatus.PARTIALLY_FILLED, 10, 102)
    assert made.slippage_bps == 200.0  # a buy paid 102 against an arrival price of 100
    assert [(c.slice_number, c.status, c.broker) for c in made.children] == [(0, "filled", A), (1, PLANNED, S)]
    assert made.message_id == f"parent-report-{record.intent_id}-7" and made.report_seq == 7
    assert made.execution == record.parent.execution
    assert fingerprint(made) == fingerprint(report_of(record, 8))  # the same news, whatever its number
    assert fingerprint(made) != fingerprint(report_of(with_sent(record, 1, [child_id(record.intent_id, 1, 0)]), 8))


def test_a_child_reported_accepted_with_its_whole_quantity_filled_has_ended_filled() -> None:
    """An executor reports an order that filled at once as accepted with its fill, then as filled: when
    the second report is lost to a crash (the parent may end before it comes again), the first one
    already says the child is filled, so the parent's final report and its next iceberg slice do not
    wait on it."""
    record = sent(iceberg(), 0)
    child = child_id(record.intent_id, 0, 0)
    record = report(record, child, OrderStatus.ACCEPTED, "10")
    assert record.slices[0].children[0].ended
    assert work_due(record, at(0.1))  # the next slice shows: this one has ended
    for number in (1, 2):
        record = sent(record, number)
        record = report(record, child_id(record.intent_id, number, 0), OrderStatus.FILLED, "10")
    made = report_of(record, 4)
    assert made.status is ParentStatus.FILLED and made.final
    assert [c.status for c in made.children] == ["filled", "filled", "filled"]


def test_a_parent_that_cannot_be_planned_ends_short_with_the_reason() -> None:
    intent = make_intent(quantity="100", execution={"split": {}})
    broken = new_record(intent.model_copy(update={"execution": None}), T0, None)  # nothing to schedule
    assert broken.problem
    made = report_of(broken, 1)
    assert made.status is ParentStatus.DONE_WITH_SHORTFALL and made.final and broken.problem in made.reason


# Children as intents ----------------------------------------------------------------------------


def test_a_child_is_the_same_intent_at_every_send_capped_by_the_parents_limit() -> None:
    record = twap(order_type="limit", limit_price="99.5", time_in_force="gtc", metadata={"desk": "eq"})
    record = with_plan(record, 0, [Share(IB, Decimal(10), "ibkr: 10 of 10 (score 0.70)")], left_reason="", now=at(0.2))
    slice_, child = record.slices[0], record.slices[0].children[0]
    intent = child_intent(record, slice_, child)
    assert intent == child_intent(record, slice_, child)  # created_at is the plan's time, not now
    assert (intent.intent_id, intent.broker, intent.quantity) == (child_id(record.intent_id, 0, 0), IB, 10)
    assert (intent.order_type, intent.limit_price, intent.time_in_force) == ("limit", Decimal("99.5"), "gtc")
    assert intent.execution is None and intent.created_at == at(0.2)
    assert intent.metadata == {"desk": "eq", "parent": record.intent_id, "slice": "0", "split": child.split_reason}


def test_a_child_keeps_its_own_tags_when_the_parents_leave_no_room() -> None:
    full = {f"k{n}": "v" for n in range(METADATA_MAX_KEYS)}
    record = sent(twap(metadata=full), 0)
    intent = child_intent(record, record.slices[0], record.slices[0].children[0])
    assert intent.metadata == {"parent": record.intent_id, "slice": "0"}
    assert isinstance(intent, OrderIntent)


# Cancel -----------------------------------------------------------------------------------------


def test_a_cancel_drops_what_is_unsent_cancels_every_child_working_and_ends_cancelled() -> None:
    """Slice 0 works (4 of 10 filled), slice 1 was planned but not known to be sent, the rest unsent:
    the cancel drops slices 2 to 9, withdraws slice 1's child (one cancel, in case it went out), cancels
    slice 0's child again every CANCEL_AGAIN_S until it ends; then the parent is cancelled with 4."""
    record = sent(twap(), 0)
    record = with_plan(record, 1, [Share(None, Decimal(10))], left_reason="", now=at(1))
    working, withdrawn = child_id(record.intent_id, 0, 0), child_id(record.intent_id, 1, 0)
    record = report(record, working, OrderStatus.PARTIALLY_FILLED, "4")
    record = with_cancel(record, "the strategy changed its mind")
    assert work_due(record, at(100)) == [] and not record.more_to_send
    assert all(s.dropped == 10 for s in record.slices[2:])
    assert {c.intent_id for c in cancels_due(record, at(1))} == {working, withdrawn}
    record = with_cancels_sent(record, [working, withdrawn], at(1))
    assert cancels_due(record, at(2)) == []
    assert next_wake(record, at(2)) == at(1 + CANCEL_AGAIN_S)
    assert [c.intent_id for c in cancels_due(record, at(1 + CANCEL_AGAIN_S))] == [working]
    assert state_of(record).status is ParentStatus.PARTIALLY_FILLED  # a child still works
    record = report(record, working, OrderStatus.CANCELLED, "4", report_seq=2)
    made = report_of(record, 3)
    assert (made.status, made.filled_quantity, made.final) == (ParentStatus.CANCELLED, 4, True)
    assert made.reason == "cancelled: the strategy changed its mind"


def test_unconfirmed_children_are_those_sent_without_a_report_yet() -> None:
    record = sent(twap(), 0, Share(A, Decimal(6)), Share(S, Decimal(4)))
    assert unconfirmed(record) == {A: Decimal(6), S: Decimal(4)}
    record = report(record, child_id(record.intent_id, 0, 0), OrderStatus.ACCEPTED)
    assert unconfirmed(record) == {S: Decimal(4)}


def test_the_largest_parent_the_contract_allows_fits_one_journal_entry() -> None:
    """1,000 slices split over five brokers, every child sent and reported: the record round-trips
    through the journal's encoding within NATS's 1 MB payload limit (compressed past 256 KB)."""
    intent = make_intent(quantity="100000", execution={"twap": {"duration_s": 5000, "slices": 1000}, "split": {}})
    record = new_record(intent, T0, Decimal(100))
    brokers = list(BrokerName)
    for number in range(1000):
        shares = [Share(b, Decimal(20), f"{b}: 20 of 100 (score 0.71, queue wait 0 s)") for b in brokers]
        record = with_plan(record, number, shares, left_reason="", now=T0)
        record = with_sent(record, number, [c.intent_id for c in record.slices[number].children])
    stored = encode_record(record)
    assert len(stored) < 1024 * 1024 and stored.startswith(b"zlib:")
    assert decode_record(stored) == record
    small = twap()
    assert encode_record(small).startswith(b"{") and decode_record(encode_record(small)) == small


def test_a_child_nothing_reported_on_is_sent_again_until_a_report_comes() -> None:
    """A child sent at 0 s with no report by RESEND_UNCONFIRMED_S (a restarted nats-server may have lost
    it) is due to be sent again, and the wake says when; a report, or a cancel, ends that."""
    record = twap()
    planned = with_plan(record, 0, [Share(A, Decimal(10))], left_reason="", now=T0)
    child = child_id(record.intent_id, 0, 0)
    record = with_sent(planned, 0, [child], T0)
    later = at(RESEND_UNCONFIRMED_S)
    assert resends_due(record, at(1)) == []
    assert next_wake(record, at(0.5)) == at(1)  # slice 1's time comes first
    assert [c.intent_id for _, c in resends_due(record, later)] == [child]
    assert resends_due(with_sent(record, 0, [child], later), later) == []  # sent again: the clock restarts
    assert resends_due(report(record, child, OrderStatus.ACCEPTED), later) == []
    assert resends_due(with_cancel(record, "stop"), later) == []
