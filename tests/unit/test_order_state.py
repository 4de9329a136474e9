"""The order state machine: allowed transitions, and FIX-style quantities under any fills."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import ExecutionReport, OrderStatus
from tests.builders import make_route
from workers.domain.ledger import LedgerEntry
from workers.domain.order_state import TRANSITIONS, Execution, InvalidTransition, can_move, check_move
from workers.domain.venue import VenueOrder
from workers.executor.handlers import _changes

S = OrderStatus


def test_the_happy_path_and_the_ambiguous_path_are_allowed() -> None:
    for path in (
        [S.NEW, S.SUBMITTED, S.ACCEPTED, S.PARTIALLY_FILLED, S.PARTIALLY_FILLED, S.FILLED],
        [S.NEW, S.SUBMITTED, S.UNKNOWN, S.ACCEPTED, S.CANCELLED],
        [S.NEW, S.SUBMITTED, S.UNKNOWN, S.FILLED],
        [S.NEW, S.REJECTED],
    ):
        state = path[0]
        for nxt in path[1:]:
            state = check_move(state, nxt)
        assert state == path[-1]


@pytest.mark.parametrize("terminal", [s for s in S if s.is_terminal])
def test_a_terminal_state_has_no_way_out(terminal: OrderStatus) -> None:
    assert TRANSITIONS[terminal] == frozenset()
    for other in S:
        if other != terminal:
            with pytest.raises(InvalidTransition, match=f"from {terminal} to {other}"):
                check_move(terminal, other)


def test_nothing_goes_back_to_new_or_from_filled_to_working() -> None:
    assert not any(S.NEW in targets for targets in TRANSITIONS.values())
    assert not can_move(S.PARTIALLY_FILLED, S.ACCEPTED)
    assert not can_move(S.ACCEPTED, S.UNKNOWN)


def test_every_status_has_a_row() -> None:
    assert set(TRANSITIONS) == set(S)


quantities = st.decimals(min_value=Decimal("0.001"), max_value=Decimal(1000), places=3)
prices = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(5000), places=2)


@given(st.lists(st.tuples(quantities, prices), min_size=1, max_size=8))
def test_fills_accumulate_fix_style(fills: list[tuple[Decimal, Decimal]]) -> None:
    """Cumulative quantity only grows, leaves = order - cumulative, the average price is
    volume-weighted, and the last fill that completes the order makes it filled."""
    total = sum(q for q, _ in fills)
    execution = Execution(total, S.ACCEPTED)
    done = Decimal(0)
    for quantity, price in fills:
        execution.fill(quantity, price, Decimal("0.01"))
        assert execution.filled_quantity == done + quantity
        done = execution.filled_quantity
        assert execution.leaves_quantity == (0 if done == total else total - done)
        assert execution.status == (S.FILLED if done == total else S.PARTIALLY_FILLED)
    weighted = sum(q * p for q, p in fills) / total
    assert execution.average_price is not None
    assert abs(execution.average_price - weighted) < Decimal("1e-20")
    assert execution.fees == Decimal("0.01") * len(fills)


def test_an_overfill_or_an_empty_fill_is_refused() -> None:
    execution = Execution(Decimal(10), S.ACCEPTED)
    execution.fill(Decimal(6), Decimal(100), Decimal(0))
    with pytest.raises(InvalidTransition, match="overfill"):
        execution.fill(Decimal(5), Decimal(100), Decimal(0))
    with pytest.raises(InvalidTransition, match="positive"):
        execution.fill(Decimal(0), Decimal(100), Decimal(0))
    assert execution.filled_quantity == 6


def test_a_filled_order_takes_no_more_fills() -> None:
    execution = Execution(Decimal(1), S.ACCEPTED)
    execution.fill(Decimal(1), Decimal(100), Decimal(0))
    with pytest.raises(InvalidTransition):
        execution.fill(Decimal("0.5"), Decimal(100), Decimal(0))


def test_a_reply_that_lags_the_ledger_is_no_news_and_no_error() -> None:
    """Alpaca's POST reply says ``pending_new`` (submitted) for an order recorded as accepted:
    nothing is reported and the entry stays as it is; news that moves on is still reported."""
    route = make_route()
    entry = LedgerEntry.of(route, S.ACCEPTED, report_seq=1, broker_order_id="b-1", decision=route)
    lagging = VenueOrder("b-1", route.intent_id, S.SUBMITTED, Decimal(10))
    assert _changes(entry, lagging, route) == (entry, [])
    part = entry.model_copy(update={"status": S.PARTIALLY_FILLED, "report_seq": 2, "filled_quantity": Decimal(4)})
    pending_cancel = VenueOrder("b-1", route.intent_id, S.ACCEPTED, Decimal(10), filled_quantity=Decimal(4))
    assert _changes(part, pending_cancel, route) == (part, [])
    filled = VenueOrder("b-1", route.intent_id, S.FILLED, Decimal(10), filled_quantity=Decimal(10))
    updated, messages = _changes(entry, filled, route)
    reported = [m.status for m in messages if isinstance(m, ExecutionReport)]
    assert (updated.status, updated.report_seq, reported) == (S.FILLED, 2, [S.FILLED])
