"""The simulated brokers: prices, fills, fees and the idempotent client order id."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from contracts import AssetClass, BrokerName, OrderStatus
from tests.builders import make_intent
from workers.venues.base import VenueRejected
from workers.venues.simulated import QuoteModel, SimulatedVenue, estimate_fee

NOW = datetime.now(UTC)


async def test_market_buy_fills_at_the_ask_and_sell_at_the_bid() -> None:
    """Marketable orders fill completely at the touch."""
    venue = SimulatedVenue(BrokerName.ALPACA)
    quote = QuoteModel().quote("AAPL")
    buy = await venue.place_order(make_intent(), "c-1")
    sell = await venue.place_order(make_intent(side="sell"), "c-2")
    assert (buy.status, buy.filled_quantity, buy.average_price) == (OrderStatus.FILLED, 10, quote.ask)
    assert sell.average_price == quote.bid
    assert quote.bid < quote.ask


async def test_same_client_order_id_returns_the_original_order() -> None:
    """A resubmission never creates a second order at the broker."""
    venue = SimulatedVenue(BrokerName.COINBASE)
    intent = make_intent(symbol="BTC-USD", asset_class="crypto", quantity="0.1", time_in_force=None)
    first = await venue.place_order(intent, intent.intent_id)
    second = await venue.place_order(intent, intent.intent_id)
    assert first.broker_order_id == second.broker_order_id
    assert len(await venue.book.all()) == 1
    assert await venue.locate(intent, intent.intent_id, first.submitted_at or NOW) is first


async def test_notional_order_buys_what_the_amount_affords() -> None:
    """A dollar-amount order becomes a fractional quantity at the ask, rounded down."""
    venue = SimulatedVenue(BrokerName.ROBINHOOD)
    order = await venue.place_order(make_intent(quantity=None, notional="100"), "c-n")
    assert order.average_price is not None
    assert order.filled_quantity * order.average_price <= Decimal(100)
    assert order.filled_quantity > 0


async def test_limit_away_from_the_market_stays_working() -> None:
    """A buy limit below the ask is accepted and not filled."""
    venue = SimulatedVenue(BrokerName.ALPACA)
    order = await venue.place_order(make_intent(order_type="limit", limit_price="1"), "c-l")
    assert (order.status, order.filled_quantity, order.leaves_quantity) == (OrderStatus.ACCEPTED, 0, 10)


async def test_unsupported_asset_is_a_broker_specific_rejection() -> None:
    """Coinbase refuses equity; another broker may take it."""
    with pytest.raises(VenueRejected) as info:
        await SimulatedVenue(BrokerName.COINBASE).place_order(make_intent(), "c-x")
    assert info.value.reason_code == "unsupported_asset"
    assert not info.value.order_specific


def test_order_ids_are_unique_across_venue_instances() -> None:
    """A restarted venue never reuses a broker order id."""
    import asyncio

    async def one() -> str:
        return (await SimulatedVenue(BrokerName.ALPACA).place_order(make_intent(), "same")).broker_order_id

    assert asyncio.run(one()) != asyncio.run(one())


@pytest.mark.parametrize(
    ("broker", "asset", "qty", "price", "fee"),
    [
        (BrokerName.ALPACA, AssetClass.EQUITY, "100", "50", "0.00"),
        (BrokerName.IBKR, AssetClass.EQUITY, "100", "50", "1.00"),  # $0.005/share, $1 minimum
        (BrokerName.IBKR, AssetClass.EQUITY, "1000", "50", "5.00"),
        (BrokerName.IBKR, AssetClass.EQUITY, "10", "0.5", "0.05"),  # capped at 1% of value
        (BrokerName.SCHWAB, AssetClass.OPTION, "3", "2", "1.95"),  # $0.65 per contract
        (BrokerName.COINBASE, AssetClass.CRYPTO, "1", "1000", "12.00"),  # 1.2% taker, entry tier
        (BrokerName.ALPACA, AssetClass.CRYPTO, "1", "1000", "2.50"),  # 0.25% taker
    ],
)
def test_fee_schedules(broker: BrokerName, asset: AssetClass, qty: str, price: str, fee: str) -> None:
    """Fees follow each broker's published entry-tier schedule."""
    assert estimate_fee(broker, asset, Decimal(qty), Decimal(price)) == Decimal(fee)
