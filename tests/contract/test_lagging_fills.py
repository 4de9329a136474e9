"""A broker whose execution list lags its order totals (Alpaca's activities, Coinbase's fills):
the order is reported only as far as its executions are known, so it is never closed with
executions still missing; and an order placed but not readable back is ambiguous, not unsent."""

from __future__ import annotations

import pytest

from contracts import OrderStatus
from tests.builders import make_intent
from tests.contract.harness import AlpacaHarness, CoinbaseHarness, FakeBrokerHarness
from workers.domain.venue import VenueAmbiguous


@pytest.mark.parametrize("start", [AlpacaHarness.start, CoinbaseHarness.start], ids=["alpaca", "coinbase"])
async def test_an_order_is_reported_only_as_far_as_its_executions_are_known(start: object) -> None:
    harness: FakeBrokerHarness = await start()  # type: ignore[operator]
    try:
        harness.fault(lot_size="2")
        intent = make_intent(**harness.kind, quantity="5")
        harness.fault(lagging_fills=1)
        order = await harness.venue.place_order(intent, intent.intent_id)
        assert (order.status, order.filled_quantity, [f.quantity for f in order.fills]) == (
            OrderStatus.PARTIALLY_FILLED,
            4,
            [2, 2],
        )
        later = await harness.venue.get_order(order.broker_order_id)
        assert later is not None and later.status is OrderStatus.FILLED
        assert [f.quantity for f in later.fills] == [2, 2, 1]
        assert [f.fill_id for f in later.fills[:2]] == [f.fill_id for f in order.fills]
    finally:
        await harness.close()


@pytest.mark.parametrize("start", [AlpacaHarness.start, CoinbaseHarness.start], ids=["alpaca", "coinbase"])
async def test_an_order_placed_but_not_readable_back_is_ambiguous(start: object) -> None:
    harness: FakeBrokerHarness = await start()  # type: ignore[operator]
    try:
        intent = make_intent(**harness.kind, quantity="1")
        harness.fault(unreadable_after_place=True)
        fake = harness.fake
        with pytest.raises(VenueAmbiguous):
            await harness.venue.place_order(intent, intent.intent_id)
        assert len(fake.orders) == 1  # it was placed: the executor will look it up, not resend blindly
    finally:
        await harness.close()
