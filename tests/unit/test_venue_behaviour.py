"""Each simulated broker treats a repeated client order id as the real one does, and can be
made to fail the ways real brokers fail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts import BrokerName, OrderStatus
from tests.builders import CRYPTO, OPTION, make_intent
from workers.domain.venue import VenueAmbiguous, VenueDuplicate, VenueRejected, VenueUnavailable
from workers.venues.simulated.book import decode_order, encode_order
from workers.venues.simulated.venue import SimulatedVenue

EARLIER = datetime.now(UTC) - timedelta(minutes=1)


@pytest.mark.parametrize("broker", [BrokerName.ALPACA, BrokerName.IBKR])
async def test_alpaca_and_ibkr_refuse_a_repeated_client_order_id(broker: BrokerName) -> None:
    """Alpaca answers 422, IBKR error 103: the order exists once and is found by its id."""
    venue = SimulatedVenue(broker)
    intent = make_intent()
    first = await venue.place_order(intent, intent.intent_id)
    with pytest.raises(VenueDuplicate):
        await venue.place_order(intent, intent.intent_id)
    assert len(await venue.book.all()) == 1
    assert await venue.locate(intent, intent.intent_id, EARLIER) == first


@pytest.mark.parametrize("broker", [BrokerName.COINBASE, BrokerName.ROBINHOOD])
async def test_coinbase_and_robinhood_return_the_original_order(broker: BrokerName) -> None:
    venue = SimulatedVenue(broker)
    intent = make_intent(**CRYPTO)
    first = await venue.place_order(intent, intent.intent_id)
    again = await venue.place_order(intent, intent.intent_id)
    assert again.broker_order_id == first.broker_order_id
    assert len(await venue.book.all()) == 1


async def test_schwab_takes_a_resubmission_as_a_second_order() -> None:
    """No client order id: a blind retry would double the order. This is why the executor looks first."""
    venue = SimulatedVenue(BrokerName.SCHWAB)
    intent = make_intent(**OPTION)
    await venue.place_order(intent, intent.intent_id)
    await venue.place_order(intent, intent.intent_id)
    assert len(await venue.book.all()) == 2


async def test_schwab_orders_are_found_by_listing_recent_ones() -> None:
    """Matching on symbol, side and size among orders placed since the decision."""
    venue = SimulatedVenue(BrokerName.SCHWAB)
    intent = make_intent(**OPTION)
    placed = await venue.place_order(intent, intent.intent_id)
    assert placed.client_order_id == ""
    assert await venue.locate(intent, intent.intent_id, EARLIER) == placed
    assert await venue.locate(make_intent(**{**OPTION, "quantity": "3"}), "other", EARLIER) is None
    assert await venue.locate(intent, intent.intent_id, datetime.now(UTC) + timedelta(seconds=1)) is None


async def test_injected_faults() -> None:
    """Outage before sending, loss of the reply after acceptance, refusal, lagging lookups."""
    venue = SimulatedVenue(BrokerName.ALPACA)
    intent = make_intent()
    venue.faults.outage = True
    with pytest.raises(VenueUnavailable):
        await venue.place_order(intent, intent.intent_id)
    assert await venue.book.all() == []
    venue.faults.outage = False
    venue.faults.reject_next = 1
    with pytest.raises(VenueRejected) as refused:
        await venue.place_order(intent, intent.intent_id)
    assert not refused.value.order_specific
    venue.faults.timeouts_after_accept = 1
    venue.faults.hidden_lookups = 1
    with pytest.raises(VenueAmbiguous):
        await venue.place_order(intent, intent.intent_id)
    assert await venue.locate(intent, intent.intent_id, EARLIER) is None  # the list lags
    found = await venue.locate(intent, intent.intent_id, EARLIER)
    assert found is not None and found.status is OrderStatus.FILLED


async def test_orders_survive_the_book_encoding() -> None:
    intent = make_intent()
    order = await SimulatedVenue(BrokerName.IBKR).place_order(intent, intent.intent_id)
    assert decode_order(encode_order(order)) == order
