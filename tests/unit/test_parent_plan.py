"""The parent-order planner (issue 30): child ids, the schedule, the split of a slice across
brokers and the parent's state, as pure functions."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from contracts import BrokerName, OrderIntent, OrderStatus, ParentStatus
from contracts.messages import INTENT_ID_MAX_LENGTH, MAX_SLICES, IntentId
from tests.builders import make_intent
from workers.domain.parents import (
    MAX_PARTS,
    ChildProgress,
    SplitCandidate,
    SplitPlan,
    child_id,
    parent_state,
    schedule,
    split_slice,
)

ARRIVAL = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
ONE = Decimal(1)
NANO = Decimal("1e-9")
INTENT_IDS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,47}\Z")
INTENT_ID = TypeAdapter(IntentId)
A, R, C, S, IB = BrokerName.ALPACA, BrokerName.ROBINHOOD, BrokerName.COINBASE, BrokerName.SCHWAB, BrokerName.IBKR


def twap_parent(quantity: str = "1000", *, duration_s: float = 600, slices: int = 10, jitter_pct: float = 0,
                **overrides: Any) -> OrderIntent:  # fmt: skip
    twap = {"duration_s": duration_s, "slices": slices, "jitter_pct": jitter_pct}
    return make_intent(quantity=quantity, execution={"twap": twap}, **overrides)


# Child ids -------------------------------------------------------------------------------------


def test_child_ids_read_as_the_parent_the_slice_and_the_part() -> None:
    assert child_id("strat1-000042", 3, 1) == "strat1-000042:3.1"
    assert child_id("strat1-000042", 3, 1) == child_id("strat1-000042", 3, 1)


@given(parent=INTENT_IDS, slice_no=st.integers(0, MAX_SLICES - 1), part_no=st.integers(0, MAX_PARTS - 1))
def test_every_child_id_is_a_valid_intent_id_within_the_length_limit(parent: str, slice_no: int, part_no: int) -> None:
    """Whatever the parent's id, its children's ids fit the contract (48 characters at most)."""
    made = child_id(parent, slice_no, part_no)
    assert len(made) <= INTENT_ID_MAX_LENGTH
    assert INTENT_ID.validate_python(made) == made
    assert made.endswith(f":{slice_no}.{part_no}")


@given(
    parents=st.lists(INTENT_IDS, min_size=2, max_size=2, unique=True),
    slots=st.lists(st.tuples(st.integers(0, MAX_SLICES - 1), st.integers(0, MAX_PARTS - 1)), min_size=2, max_size=2),
)
def test_child_ids_are_distinct_across_parents_slices_and_parts(
    parents: list[str], slots: list[tuple[int, int]]
) -> None:
    """Two different (parent, slice, part) never share an id; the same one always gets the same."""
    keys = {(p, s, n) for p in parents for s, n in slots}
    ids = {child_id(p, s, n) for p, s, n in keys}
    assert len(ids) == len(keys)


@given(
    prefix=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{40,46}\Z"),
    tails=st.lists(st.from_regex(r"\A[A-Za-z0-9]\Z"), min_size=2, max_size=2, unique=True),
)
def test_long_parent_ids_that_differ_only_at_the_end_still_get_distinct_children(prefix: str, tails: list[str]) -> None:
    """Shortening keeps a hash of the whole id, so parents alike in their first 41 characters differ."""
    first, second = (prefix + tail for tail in tails)
    assert child_id(first, 0, 0) != child_id(second, 0, 0)


def test_a_long_parent_id_is_shortened_the_same_way_for_every_child() -> None:
    """A 48-character parent id keeps its beginning and a hash of the whole, identical in every child."""
    long_id = "desk-7.rebalance:2026-03-02T14:30:00Z-AAPL-00001"
    assert len(long_id) == 48
    stems = {child_id(long_id, s, p).rsplit(":", 1)[0] for s in (0, 9, 999) for p in (0, 99)}
    assert len(stems) == 1
    (stem,) = stems
    assert stem.startswith(long_id[:20]) and len(stem) == INTENT_ID_MAX_LENGTH - len(":999.99")
    other = long_id[:-1] + "2"
    assert child_id(other, 0, 0) != child_id(long_id, 0, 0)
    assert len(child_id(long_id, 999, 99)) == INTENT_ID_MAX_LENGTH


@pytest.mark.parametrize(("slice_no", "part_no"), [(-1, 0), (MAX_SLICES, 0), (0, -1), (0, MAX_PARTS)])
def test_child_ids_out_of_range_are_refused(slice_no: int, part_no: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        child_id("p-1", slice_no, part_no)


# Schedule --------------------------------------------------------------------------------------


def test_a_twap_without_jitter_is_evenly_spaced_from_arrival_and_adds_up() -> None:
    """1003 shares in 10 slices over 10 minutes: a slice a minute from arrival, 100 or 101 shares each."""
    slices = schedule(twap_parent("1003"), ARRIVAL)
    assert [s.number for s in slices] == list(range(10))
    assert [s.due_at for s in slices] == [ARRIVAL + timedelta(minutes=i) for i in range(10)]
    assert sum(s.quantity for s in slices) == Decimal(1003)
    assert sorted({s.quantity for s in slices}) == [Decimal(100), Decimal(101)]
    assert not any(s.after_previous for s in slices)


def test_a_fractional_parent_is_sliced_to_nine_decimals() -> None:
    slices = schedule(twap_parent("10.000000001", slices=3, duration_s=30), ARRIVAL)
    assert sum(s.quantity for s in slices) == Decimal("10.000000001")
    assert all(s.quantity.as_tuple().exponent >= -9 for s in slices)  # type: ignore[operator]


def test_jitter_is_deterministic_per_parent_and_differs_between_parents() -> None:
    """The same parent always gets the same times; another parent id gets others; slice 0 stays at arrival."""
    first = schedule(twap_parent(intent_id="p-a", jitter_pct=40), ARRIVAL)
    again = schedule(twap_parent(intent_id="p-a", jitter_pct=40), ARRIVAL)
    other = schedule(twap_parent(intent_id="p-b", jitter_pct=40), ARRIVAL)
    assert first == again
    assert [s.due_at for s in first] != [s.due_at for s in other]
    assert first[0].due_at == other[0].due_at == ARRIVAL
    even = [ARRIVAL + timedelta(minutes=i) for i in range(10)]
    assert [s.due_at for s in first] != even
    assert all(abs((s.due_at - t).total_seconds()) <= 24 for s, t in zip(first, even, strict=True) if s.due_at)


@st.composite
def twap_parents(draw: st.DrawFn) -> OrderIntent:
    slices = draw(st.integers(2, MAX_SLICES))
    duration = draw(st.floats(max(10.0, float(slices)), 5 * 86400.0, allow_nan=False))
    assume(duration / slices >= 1)
    if draw(st.booleans()):
        quantity = str(draw(st.integers(slices, 10**8)))
    else:
        quantity = str(Decimal(draw(st.integers(slices, 10**15))) * NANO)
    return twap_parent(
        quantity,
        intent_id=draw(INTENT_IDS),
        duration_s=duration,
        slices=slices,
        jitter_pct=draw(st.sampled_from([0.0, 0.5, 10.0, 33.3, 50.0])),
    )


@settings(max_examples=200, deadline=None)
@given(parent=twap_parents())
def test_a_twap_schedule_adds_up_exactly_in_order_within_its_duration(parent: OrderIntent) -> None:
    """Whatever the quantity, slice count, duration and jitter: the slices add up to the quantity
    exactly in whole steps, each is positive and within one step of the others, the times rise
    strictly from arrival and stay inside the duration, and a second plan is the same."""
    assert parent.execution is not None and parent.execution.twap is not None and parent.quantity is not None
    twap, step = parent.execution.twap, parent.quantity_step
    slices = schedule(parent, ARRIVAL)
    assert len(slices) == twap.slices
    assert sum(s.quantity for s in slices) == parent.quantity
    assert all(s.quantity > 0 and s.quantity % step == 0 for s in slices)
    assert max(s.quantity for s in slices) - min(s.quantity for s in slices) <= step
    times = [s.due_at for s in slices]
    assert times[0] == ARRIVAL
    assert all(t is not None for t in times)
    assert all(a < b for a, b in itertools.pairwise(times))  # type: ignore[operator]
    assert times[-1] < ARRIVAL + timedelta(seconds=twap.duration_s)  # type: ignore[operator]
    assert schedule(parent, ARRIVAL) == slices


def test_an_iceberg_shows_its_display_quantity_one_slice_after_another() -> None:
    """1030 showing 100: ten slices of 100 and one of 30; the first at arrival, the rest after the previous."""
    slices = schedule(make_intent(quantity="1030", execution={"iceberg": {"display_quantity": "100"}}), ARRIVAL)
    assert [s.quantity for s in slices] == [Decimal(100)] * 10 + [Decimal(30)]
    assert (slices[0].due_at, slices[0].after_previous) == (ARRIVAL, False)
    assert all(s.due_at is None and s.after_previous for s in slices[1:])


@settings(max_examples=200, deadline=None)
@given(
    units=st.integers(2, 10**7),
    display_units=st.integers(1, 10**7),
    fractional=st.booleans(),
)
def test_an_iceberg_adds_up_and_never_shows_more_than_its_display(
    units: int, display_units: int, fractional: bool
) -> None:
    assume(display_units < units and -(-units // display_units) <= MAX_SLICES)
    step = NANO if fractional else ONE
    quantity, display = Decimal(units) * step, Decimal(display_units) * step
    parent = make_intent(
        symbol="BTC-USD" if fractional else "AAPL",
        asset_class="crypto" if fractional else "equity",
        time_in_force=None,
        quantity=str(quantity),
        execution={"iceberg": {"display_quantity": str(display)}},
    )
    slices = schedule(parent, ARRIVAL)
    assert sum(s.quantity for s in slices) == quantity
    assert all(0 < s.quantity <= display for s in slices)
    assert all(s.quantity == display for s in slices[:-1])
    assert [s.number for s in slices] == list(range(len(slices)))


def test_a_split_alone_is_one_slice_of_everything_at_arrival() -> None:
    parent = make_intent(quantity="20000", execution={"split": {"max_brokers": 3}})
    assert [(s.number, s.due_at, s.quantity) for s in schedule(parent, ARRIVAL)] == [(0, ARRIVAL, Decimal(20000))]


def test_schedule_refuses_an_ordinary_intent_and_a_naive_arrival_time() -> None:
    with pytest.raises(ValueError, match="not a parent order"):
        schedule(make_intent(), ARRIVAL)
    with pytest.raises(ValueError, match="time zone"):
        schedule(twap_parent(), datetime(2026, 3, 2, 14, 30))


# Split -----------------------------------------------------------------------------------------


def five(**each: Any) -> list[SplitCandidate]:
    """All five brokers, best score first (alpaca), with the same fields."""
    return [SplitCandidate(b, score=0.9 - i / 10, **each) for i, b in enumerate((A, S, IB, R, C))]


def shares(plan: SplitPlan) -> dict[BrokerName, Decimal]:
    return {c.broker: c.quantity for c in plan.children}


def test_a_slice_is_shared_equally_the_odd_shares_to_the_best_scored() -> None:
    """20,003 over five brokers: 4,001 to the three best, 4,000 to the others, with a reason each."""
    plan = split_slice(Decimal(20003), five(), step=ONE, max_brokers=5)
    assert shares(plan) == {A: 4001, S: 4001, IB: 4001, R: 4000, C: 4000}
    assert plan.unallocated == 0 and plan.unallocated_reason == ""
    assert len(plan.reasons) == 5
    assert plan.reasons[0] == "alpaca: 4001 of 20003 (score 0.90, queue wait 0 s)"


def test_a_broker_short_of_allocation_room_takes_what_it_may_and_the_rest_goes_to_the_others() -> None:
    candidates = five()
    candidates[0] = SplitCandidate(A, score=0.9, allocation_room=Decimal("1000.7"))
    plan = split_slice(Decimal(20000), candidates, step=ONE, max_brokers=5)
    assert shares(plan) == {A: 1000, S: 4750, IB: 4750, R: 4750, C: 4750}
    assert "alpaca: 1000 of 20000 (score 0.90, queue wait 0 s, all its allocation room 1000.7)" in plan.reasons


def test_ineligible_brokers_and_brokers_beyond_max_brokers_get_nothing_and_say_why() -> None:
    candidates = five()
    candidates[1] = SplitCandidate(S, excluded="broker_down: schwab is down")
    plan = split_slice(Decimal(900), candidates, step=ONE, max_brokers=2)
    assert shares(plan) == {A: 450, IB: 450}
    assert "schwab: nothing: not eligible: broker_down: schwab is down" in plan.reasons
    assert any(r.startswith("robinhood: nothing: max_brokers 2 reached") for r in plan.reasons)


def test_a_broker_without_rate_headroom_ranks_after_those_with_some_then_score_then_queue_wait() -> None:
    candidates = [
        SplitCandidate(A, score=0.95, headroom_orders=0, queue_wait_s=4.0),
        SplitCandidate(S, score=0.5, queue_wait_s=2.0),
        SplitCandidate(IB, score=0.5, queue_wait_s=0.5),
    ]
    plan = split_slice(Decimal(100), candidates, step=ONE, max_brokers=2)
    assert [c.broker for c in plan.children] == [IB, S]
    assert "alpaca: nothing: max_brokers 2 reached by better-ranked brokers (score 0.95, queue wait 4 s, " \
           "no rate headroom now)" in plan.reasons  # fmt: skip


def test_a_reducing_order_goes_only_to_the_holders_each_at_most_what_it_holds() -> None:
    """Selling 500 of a long held 300 at alpaca and 150 at ibkr: 300 and 150, and 50 no broker can close."""
    plan = split_slice(
        Decimal(500), five(), step=ONE, max_brokers=5, closing_holdings={A: Decimal(300), IB: Decimal(150)}
    )
    assert shares(plan) == {A: 300, IB: 150}
    assert plan.unallocated == 50
    assert "full" in plan.unallocated_reason
    assert "schwab: nothing: it holds none of the position this order closes" in plan.reasons


def test_a_minimum_child_merges_small_shares_into_fewer_brokers() -> None:
    """30 shares with at least 10 a child: three children of 10, not five of 6."""
    plan = split_slice(Decimal(30), five(), step=ONE, max_brokers=5, min_child_quantity=Decimal(10))
    assert shares(plan) == {A: 10, S: 10, IB: 10}
    assert any("with it a child would fall below its minimum" in r for r in plan.reasons)


def test_a_notional_minimum_is_converted_at_the_price_and_without_a_price_the_slice_is_not_split() -> None:
    plan = split_slice(
        Decimal(100), five(), step=ONE, max_brokers=5, min_child_notional=Decimal(4000), price=Decimal(100)
    )
    assert shares(plan) == {A: 50, S: 50}
    assert plan.reasons[0] == "smallest child: 40 (min_child_notional 4000 at 100)"
    unpriced = split_slice(Decimal(100), five(), step=ONE, max_brokers=5, min_child_notional=Decimal(4000))
    assert shares(unpriced) == {A: 100}
    assert "the slice is not split" in unpriced.reasons[0]


def test_a_slice_below_the_minimum_child_goes_whole_to_one_broker() -> None:
    plan = split_slice(Decimal(7), five(), step=ONE, max_brokers=5, min_child_quantity=Decimal(10))
    assert shares(plan) == {A: 7}


def test_the_split_prefers_a_set_that_places_everything_over_the_best_ranked_one() -> None:
    """Alpaca may take 10 and every child needs 10: 15 shares go whole to schwab rather than 10
    to alpaca and 5 left over."""
    candidates = [SplitCandidate(A, score=0.9, allocation_room=Decimal(10)), SplitCandidate(S, score=0.8)]
    plan = split_slice(Decimal(15), candidates, step=ONE, max_brokers=5, min_child_quantity=Decimal(10))
    assert shares(plan) == {S: 15} and plan.unallocated == 0


def test_a_broker_minimum_above_the_slice_leaves_it_out() -> None:
    candidates = [SplitCandidate(A, score=0.9, min_quantity=Decimal(50)), SplitCandidate(S, score=0.8)]
    plan = split_slice(Decimal(40), candidates, step=ONE, max_brokers=5)
    assert shares(plan) == {S: 40}
    assert "alpaca: nothing: its minimum order 50 is above the slice" in plan.reasons


def test_when_no_broker_can_take_anything_the_whole_slice_is_unallocated_with_a_reason() -> None:
    candidates = [SplitCandidate(A, excluded="kill_switch"), SplitCandidate(S, allocation_room=Decimal(0))]
    plan = split_slice(Decimal(100), candidates, step=ONE, max_brokers=5)
    assert plan.children == ()
    assert plan.unallocated == 100
    assert plan.unallocated_reason == "no broker can take any of 100"
    assert len(plan.reasons) == 2


def test_fractional_slices_split_to_nine_decimals() -> None:
    plan = split_slice(Decimal("1.000000001"), five(), step=NANO, max_brokers=3)
    assert sum(c.quantity for c in plan.children) == Decimal("1.000000001")
    assert shares(plan) == {A: Decimal("0.333333334"), S: Decimal("0.333333334"), IB: Decimal("0.333333333")}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_brokers": 0}, "max_brokers"),
        ({"min_child_quantity": ONE, "min_child_notional": ONE}, "at most one"),
        ({"quantity": Decimal("1.5")}, "whole number of steps"),
        ({"candidates": [SplitCandidate(A), SplitCandidate(A)]}, "once"),
    ],
)
def test_split_refuses_impossible_inputs(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"quantity": Decimal(10), "candidates": five(), "step": ONE, "max_brokers": 5}
    with pytest.raises(ValueError, match=message):
        split_slice(**(args | kwargs))


@st.composite
def split_inputs(draw: st.DrawFn) -> dict[str, Any]:
    step = draw(st.sampled_from([ONE, NANO]))
    brokers = draw(st.lists(st.sampled_from(list(BrokerName)), unique=True, max_size=5))
    # Rooms and holdings in whole steps, or one and a half of them (a room need not be a whole step).
    amounts = st.builds(
        lambda n, f: Decimal(n) * step * f, st.integers(0, 5000), st.sampled_from([ONE, Decimal("1.5")])
    )
    candidates = [
        SplitCandidate(
            broker,
            excluded=draw(st.sampled_from([None, None, None, "broker_down"])),
            headroom_orders=draw(st.integers(0, 3)),
            queue_wait_s=draw(st.floats(0, 10)),
            allocation_room=draw(st.none() | amounts),
            score=draw(st.floats(0, 1)),
            min_quantity=draw(st.sampled_from([Decimal(0), step, 10 * step, 300 * step])),
        )
        for broker in brokers
    ]
    minimum = draw(st.sampled_from([None, "quantity", "notional"]))
    closing = draw(st.none() | st.dictionaries(st.sampled_from(list(BrokerName)), amounts, max_size=5))
    return {
        "quantity": Decimal(draw(st.integers(1, 20_000))) * step,
        "candidates": candidates,
        "step": step,
        "max_brokers": draw(st.integers(1, 5)),
        "min_child_quantity": Decimal(draw(st.integers(1, 3000))) * step if minimum == "quantity" else None,
        "min_child_notional": Decimal(draw(st.integers(1, 10**6))) / 100 if minimum == "notional" else None,
        "price": draw(st.none() | st.decimals(Decimal("0.01"), Decimal(1000), places=2)),
        "closing_holdings": closing,
    }


@settings(max_examples=400, deadline=None)
@given(inputs=split_inputs())
def test_a_split_adds_up_and_never_breaks_a_limit(inputs: dict[str, Any]) -> None:
    """Whatever the candidates: children plus remainder equal the slice exactly, in whole steps;
    no broker gets more than its allocation room or (closing) its holding, an ineligible broker or
    one below its minimum gets nothing, no broker twice, at most max_brokers children, every
    broker is explained, and a remainder carries a reason."""
    plan = split_slice(**inputs)
    step, quantity = inputs["step"], inputs["quantity"]
    by_broker = {c.broker: c for c in inputs["candidates"]}
    assert sum(c.quantity for c in plan.children) + plan.unallocated == quantity
    assert plan.unallocated >= 0
    assert len(plan.children) <= inputs["max_brokers"]
    assert len({c.broker for c in plan.children}) == len(plan.children)
    holdings = inputs["closing_holdings"]
    for child in plan.children:
        candidate = by_broker[child.broker]
        assert child.quantity > 0 and child.quantity % step == 0
        assert candidate.excluded is None
        assert child.quantity >= candidate.min_quantity
        if candidate.allocation_room is not None:
            assert child.quantity <= candidate.allocation_room
        if holdings is not None:
            assert child.quantity <= holdings.get(child.broker, 0)
        if inputs["min_child_quantity"] is not None:
            assert child.quantity >= min(inputs["min_child_quantity"], quantity)
    if inputs["min_child_notional"] is not None and inputs["price"] is None:
        assert len(plan.children) <= 1
    for broker in by_broker:
        assert sum(r.startswith(f"{broker}: ") for r in plan.reasons) == 1
    assert bool(plan.unallocated) == bool(plan.unallocated_reason)
    assert split_slice(**inputs) == plan


# Parent state ----------------------------------------------------------------------------------


PARENT = make_intent(quantity="300", execution={"split": {}})
SELL = make_intent(quantity="300", side="sell", execution={"split": {}})


def progress(status: str, filled: str = "0", price: str | None = None) -> ChildProgress:
    return ChildProgress(OrderStatus(status), Decimal(filled), Decimal(price) if price else None)


@pytest.mark.parametrize(
    ("children", "more_to_send", "cancel", "status"),
    [
        ({}, True, False, ParentStatus.WORKING),
        ({"c0": progress("accepted")}, True, False, ParentStatus.WORKING),
        ({"c0": progress("filled", "100", "10")}, True, False, ParentStatus.PARTIALLY_FILLED),
        ({"c0": progress("partially_filled", "50", "10")}, False, False, ParentStatus.PARTIALLY_FILLED),
        ({"c0": progress("filled", "200", "10"), "c1": progress("filled", "100", "11")}, False, False, "filled"),
        ({"c0": progress("filled", "200", "10"), "c1": progress("rejected")}, False, False, "done_with_shortfall"),
        ({"c0": progress("filled", "200", "10"), "c1": progress("accepted")}, False, True, "partially_filled"),
        ({"c0": progress("filled", "200", "10"), "c1": progress("cancelled")}, False, True, "cancelled"),
        ({"c0": progress("cancelled")}, True, True, ParentStatus.CANCELLED),
        ({"c0": progress("filled", "300", "10")}, False, True, ParentStatus.FILLED),
    ],
)
def test_the_parent_status_follows_its_children(
    children: dict[str, ChildProgress], more_to_send: bool, cancel: bool, status: str
) -> None:
    """Filled once the quantity is; cancelled once asked and no child works; short once nothing is
    left to send and every child ended; else partially filled or working."""
    state = parent_state(
        PARENT, children, arrival_price=Decimal(10), more_to_send=more_to_send, cancel_requested=cancel
    )
    assert state.status == status
    assert state.final == state.status.is_terminal


def test_the_average_price_weighs_each_child_and_slippage_is_against_arrival() -> None:
    """200 at 10.00 and 100 at 10.03: average 10.01, 10 bps worse than 10.00 for a buy, better for a sell."""
    children = {"c0": progress("filled", "200", "10.00"), "c1": progress("filled", "100", "10.03")}
    buy = parent_state(PARENT, children, arrival_price=Decimal(10), more_to_send=False)
    assert (buy.filled_quantity, buy.average_price, buy.slippage_bps) == (Decimal(300), Decimal("10.01"), 10.0)
    sell = parent_state(SELL, children, arrival_price=Decimal(10), more_to_send=False)
    assert sell.slippage_bps == -10.0
    unknown = parent_state(PARENT, children, arrival_price=None, more_to_send=False)
    assert unknown.average_price == Decimal("10.01") and unknown.slippage_bps is None
    empty = parent_state(PARENT, {"c0": progress("accepted")}, arrival_price=Decimal(10), more_to_send=True)
    assert (empty.average_price, empty.slippage_bps) == (None, None)


@given(
    fills=st.lists(
        st.tuples(st.sampled_from(list(OrderStatus)), st.integers(0, 100), st.integers(1, 10_000)), max_size=6
    ),
    side=st.sampled_from(["buy", "sell"]),
    more_to_send=st.booleans(),
    cancel=st.booleans(),
)
def test_the_fold_sums_fills_and_its_slippage_sign_follows_the_side(
    fills: list[tuple[OrderStatus, int, int]], side: str, more_to_send: bool, cancel: bool
) -> None:
    parent = PARENT if side == "buy" else SELL
    children = {
        f"c{i}": ChildProgress(status, Decimal(filled), Decimal(cents) / 100)
        for i, (status, filled, cents) in enumerate(fills)
    }
    arrival = Decimal(50)
    state = parent_state(parent, children, arrival_price=arrival, more_to_send=more_to_send, cancel_requested=cancel)
    assert state.filled_quantity == sum(Decimal(f) for _, f, _ in fills)
    if state.filled_quantity == 0:
        assert state.status in (ParentStatus.WORKING, ParentStatus.CANCELLED, ParentStatus.DONE_WITH_SHORTFALL)
        assert state.average_price is None
    else:
        assert state.average_price is not None and state.slippage_bps is not None
        worse = state.average_price > arrival if side == "buy" else state.average_price < arrival
        assert (state.slippage_bps > 0) == worse or state.average_price == arrival
    if state.final:
        assert state.filled_quantity >= 300 or not any(not s.is_terminal for s, _, _ in fills)


def test_an_ordinary_intent_id_pattern_is_what_the_contract_says() -> None:
    """The hypothesis strategy above draws exactly the contract's intent ids."""
    pattern = INTENT_ID.json_schema()["pattern"]
    assert re.fullmatch(pattern, "a:1.0") and not re.fullmatch(pattern, "-a")
