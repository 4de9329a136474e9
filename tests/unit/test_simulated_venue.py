"""The simulated brokers: prices, fills, fees and the idempotent client order id."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from contracts import AssetClass, BrokerName, OrderStatus
from tests.builders import CRYPTO, make_intent
from workers.domain.venue import VenueRateLimited, VenueRejected, VenueUnavailable
from workers.venues.simulated.book import Request, repeated_without_lookup
from workers.venues.simulated.quotes import QuoteModel
from workers.venues.simulated.venue import COERCE, Faults, SimulatedVenue, estimate_fee

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


async def test_large_market_orders_fill_in_lots() -> None:
    """With a lot size, one order executes several times; the last execution fills it."""
    venue = SimulatedVenue(BrokerName.ALPACA)
    venue.faults.update({"lot_size": "4"})
    order = await venue.place_order(make_intent(quantity="10"), "lots-1")
    assert [f.quantity for f in order.fills] == [4, 4, 2]
    assert (order.status, order.filled_quantity, order.leaves_quantity) == (OrderStatus.FILLED, 10, 0)
    assert order.fees == sum(f.fee for f in order.fills)


async def test_a_resting_order_fills_partially_then_fully_and_cannot_be_cancelled_after() -> None:
    venue = SimulatedVenue(BrokerName.ALPACA)
    order = await venue.place_order(make_intent(order_type="limit", limit_price="1.00", quantity="10"), "rest-1")
    assert order.status is OrderStatus.ACCEPTED and not order.fills
    partial = await venue.trade(order.broker_order_id, Decimal(3))
    assert (partial.status, partial.filled_quantity, partial.leaves_quantity) == (OrderStatus.PARTIALLY_FILLED, 3, 7)
    assert partial.average_price == Decimal("1.00")
    done = await venue.trade(order.broker_order_id)
    assert (done.status, done.filled_quantity) == (OrderStatus.FILLED, 10)
    with pytest.raises(VenueRejected, match="already filled") as refused:
        await venue.cancel_order(order.broker_order_id)
    assert refused.value.reason_code == "too_late_to_cancel"


async def test_cancelling_a_working_order() -> None:
    venue = SimulatedVenue(BrokerName.IBKR)
    order = await venue.place_order(make_intent(order_type="limit", limit_price="1.00"), "rest-2")
    cancelled = await venue.cancel_order(order.broker_order_id)
    assert cancelled.status is OrderStatus.CANCELLED and cancelled.leaves_quantity == 0
    with pytest.raises(VenueRejected) as unknown:
        await venue.cancel_order("no-such-order")
    assert unknown.value.reason_code == "unknown_order"


async def test_account_and_positions_follow_the_fills() -> None:
    venue = SimulatedVenue(BrokerName.ALPACA, cash=Decimal(100_000))
    quote = QuoteModel().quote("AAPL")
    await venue.place_order(make_intent(quantity="10"), "pos-1")
    await venue.place_order(make_intent(quantity="4", side="sell"), "pos-2")
    [line] = await venue.get_positions()
    assert (line.symbol, line.quantity, line.average_cost) == ("AAPL", 6, quote.ask)
    assert line.market_price == QuoteModel().mid("AAPL")
    assert line.unrealized_pnl == ((line.market_price - quote.ask) * 6).quantize(Decimal("0.01"))
    account = await venue.get_account()
    assert account.cash == 100_000 - 10 * quote.ask + 4 * quote.bid
    assert account.portfolio_value == account.cash + line.market_value


async def test_positions_count_each_fill_once_as_the_book_changes_between_looks() -> None:
    """The account is kept up to date from what the book saved since the last look: a working
    order's fills count as they come, and a finished order is not counted again."""
    venue = SimulatedVenue(BrokerName.ALPACA, cash=Decimal(100_000))
    resting = await venue.place_order(make_intent(order_type="limit", limit_price="1.00", quantity="10"), "inc-1")
    assert await venue.get_positions() == []
    await venue.trade(resting.broker_order_id, Decimal(3))
    [line] = await venue.get_positions()
    assert line.quantity == 3
    await venue.trade(resting.broker_order_id)
    await venue.place_order(make_intent(quantity="5"), "inc-2")
    [first] = await venue.get_positions()
    [again] = await venue.get_positions()
    assert first.quantity == again.quantity == 15
    account = await venue.get_account()
    ask = QuoteModel().quote("AAPL").ask
    assert account.cash == 100_000 - 10 * Decimal("1.00") - 5 * ask


async def test_a_buy_beyond_the_cash_is_refused_for_another_broker_to_try() -> None:
    venue = SimulatedVenue(BrokerName.ALPACA, cash=Decimal(1000))
    with pytest.raises(VenueRejected, match="needs") as refused:
        await venue.place_order(make_intent(quantity="1000"), "poor-1")
    assert refused.value.reason_code == "insufficient_buying_power"
    assert not refused.value.order_specific


async def test_an_unlisted_symbol_is_refused_for_good() -> None:
    venue = SimulatedVenue(BrokerName.ALPACA)
    venue.faults.update({"unknown_symbols": ["ZZZZ"]})
    with pytest.raises(VenueRejected) as refused:
        await venue.place_order(make_intent(symbol="ZZZZ"), "zz-1")
    assert (refused.value.reason_code, refused.value.order_specific) == ("unknown_symbol", True)


async def test_the_rate_window_answers_429_with_the_reset_time() -> None:
    venue = SimulatedVenue(BrokerName.ALPACA, rate_limit=(3, 60.0))
    for k in range(3):
        await venue.place_order(make_intent(), f"rate-{k}")
    with pytest.raises(VenueRateLimited) as limited:
        await venue.place_order(make_intent(), "rate-3")
    assert 0 < limited.value.retry_after <= 60
    assert (venue.rate.peak, venue.rate.refused) == (3, 1)


async def test_an_outage_refuses_every_request_before_it_reaches_the_broker() -> None:
    venue = SimulatedVenue(BrokerName.ALPACA)
    await venue.connect()
    venue.faults.update({"outage": True})
    assert not venue.is_connected
    with pytest.raises(VenueUnavailable):
        await venue.place_order(make_intent(), "down-1")
    with pytest.raises(VenueUnavailable):
        await venue.get_account()
    assert not await venue.book.all()


def test_faults_are_validated_by_name_and_value() -> None:
    faults = Faults()
    faults.update({"reject_next": 2, "latency_ms": 5, "outage": True})
    assert faults.as_dict()["reject_next"] == 2 and faults.outage
    with pytest.raises(ValueError, match="unknown fault 'explode'"):
        faults.update({"explode": True})
    with pytest.raises(ValueError, match="bad value"):
        faults.update({"reject_next": -1})
    with pytest.raises(ValueError, match="bad value"):
        faults.update({"outage": "yes"})
    with pytest.raises(ValueError, match="bad value"):
        faults.update({"warning": "x" * 501})
    assert set(COERCE) == set(Faults.__dataclass_fields__)  # every fault is checked


async def test_the_request_log_shows_a_placement_repeated_without_a_lookup() -> None:
    """The broker's request log, in order: a placement repeated after a lookup that found
    nothing is not blind; one repeated straight away, or after the order was found, is."""
    venue = SimulatedVenue(BrokerName.COINBASE)
    careful, blind = make_intent(**CRYPTO), make_intent(**CRYPTO)
    since = datetime.now(UTC)
    assert await venue.locate(careful, careful.intent_id, since) is None
    await venue.place_order(careful, careful.intent_id)
    await venue.place_order(blind, blind.intent_id)
    await venue.place_order(blind, blind.intent_id)  # returns the original: harmless here, blind all the same
    assert await venue.locate(blind, blind.intent_id, since) is not None
    await venue.place_order(blind, blind.intent_id)  # although the order was found

    requests = await venue.book.requests()
    assert [(r.kind, r.client_order_id == careful.intent_id, r.found) for r in requests[:2]] == [
        ("lookup", True, False),
        ("place", True, False),
    ]
    assert repeated_without_lookup(requests) == {blind.intent_id: 2}
    assert repeated_without_lookup(
        [*requests, Request("lookup", blind.intent_id), Request("place", blind.intent_id)]
    ) == {blind.intent_id: 2}


async def test_a_cash_account_refuses_a_short_sale_and_sells_what_it_holds() -> None:
    """At a cash account a sell of more than is held is refused (another broker may take it); a sale of a
    holding fills and gives its proceeds back to the buying power."""
    venue = SimulatedVenue(BrokerName.ALPACA, cash=Decimal(100_000))
    with pytest.raises(VenueRejected) as refused:
        await venue.place_order(make_intent(side="sell"), "short-1")
    assert (refused.value.reason_code, refused.value.order_specific) == ("short_sale_not_allowed", False)
    await venue.place_order(make_intent(quantity="5"), "buy-1")
    spent = (await venue.get_account()).buying_power
    await venue.place_order(make_intent(side="sell", quantity="5"), "sell-1")
    assert (await venue.get_account()).buying_power > spent
    assert await venue.get_positions() == []


async def test_a_margin_account_holds_margin_for_a_short_sale() -> None:
    """A short sale at a margin account fills, needs its value in buying power and holds it while open."""
    venue = SimulatedVenue(BrokerName.IBKR, cash=Decimal(100_000), account_type="margin")
    await venue.connect()
    short = await venue.place_order(make_intent(side="sell"), "short-1")
    assert short.status is OrderStatus.FILLED
    [position] = await venue.get_positions()
    account = await venue.get_account()
    assert position.quantity == -10
    assert account.buying_power == account.cash + 2 * position.market_value  # proceeds and margin held
    small = SimulatedVenue(BrokerName.IBKR, cash=Decimal(100), account_type="margin")
    with pytest.raises(VenueRejected) as refused:
        await small.place_order(make_intent(side="sell"), "short-2")
    assert refused.value.reason_code == "insufficient_buying_power"
