"""The executor's choice to look before placing: never trust the delivery count alone."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from contracts import BrokerName, OrderStatus
from tests.builders import make_route
from workers.domain.ledger import LedgerEntry
from workers.executor.handlers import placement_plan

ROUTE = make_route(broker=BrokerName.SCHWAB)


def entry(status: OrderStatus, **fields: object) -> LedgerEntry:
    return LedgerEntry.of(ROUTE, status, **fields)  # type: ignore[arg-type]


def test_a_first_delivery_with_a_ledger_entry_of_its_attempt_looks_first() -> None:
    """A restarted server may redeliver as delivery 1 a route whose order was placed: the
    ledger entry says so, and the executor looks before placing, at any broker."""
    for client_ids in (True, False):
        plan = placement_plan(entry(OrderStatus.FILLED), ROUTE, 1, replayed=False, client_ids=client_ids)
        assert plan.look_first
        assert plan.miss_is_conclusive is client_ids


def test_a_broker_without_client_ids_is_always_looked_at_and_marked_before_placing() -> None:
    """Schwab: look first even on a clean first delivery (a miss is then conclusive), and mark
    the ledger before sending so a later delivery knows the order may exist."""
    plan = placement_plan(None, ROUTE, 1, replayed=False, client_ids=False)
    assert (plan.look_first, plan.miss_is_conclusive, plan.mark_before_placing) == (True, True, True)
    marked = placement_plan(entry(OrderStatus.SUBMITTED), ROUTE, 1, replayed=False, client_ids=False)
    assert (marked.look_first, marked.miss_is_conclusive) == (True, False)


def test_a_broker_with_client_ids_places_a_clean_first_delivery_directly() -> None:
    plan = placement_plan(None, ROUTE, 1, replayed=False, client_ids=True)
    assert (plan.look_first, plan.mark_before_placing) == (False, False)


def test_provably_unsent_earlier_deliveries_place_without_looking() -> None:
    plan = placement_plan(entry(OrderStatus.NEW, unsent_delivery=2), ROUTE, 3, replayed=False, client_ids=True)
    assert not plan.look_first


@given(
    status=st.sampled_from(list(OrderStatus)),
    delivery=st.integers(1, 10),
    replayed=st.booleans(),
    client_ids=st.booleans(),
    other_attempt=st.booleans(),
)
def test_a_placement_without_looking_is_only_ever_safe(
    status: OrderStatus, delivery: int, replayed: bool, client_ids: bool, other_attempt: bool
) -> None:
    """Whatever the ledger and the delivery say, placing without a look happens only where the
    broker itself refuses a repeated client id, or every earlier delivery provably never sent."""
    ledger = LedgerEntry.of(ROUTE, status).model_copy(update={"attempt": ROUTE.attempt + int(other_attempt)})
    plan = placement_plan(ledger, ROUTE, delivery, replayed=replayed, client_ids=client_ids)
    if not plan.look_first:
        provably_unsent = not other_attempt and status is OrderStatus.NEW and ledger.unsent_delivery == delivery - 1
        assert provably_unsent or (client_ids and delivery == 1 and not replayed and other_attempt)
    if not client_ids and not plan.miss_is_conclusive:
        assert delivery > 1 or replayed or not other_attempt
