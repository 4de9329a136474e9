"""The simulated brokers' market impact: prices move with the size taken and recover over time."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from contracts import AssetClass, BrokerName, OrderStatus, Side, Subjects
from tests.builders import make_intent
from workers.domain.config import DEFAULT_DEPTH, ConfigError, ImpactConfig, parse_config
from workers.domain.venue import VenueOrder
from workers.platform.topology import Topology
from workers.venues.factory import VenueContext, build_venue
from workers.venues.simulated.impact import ImpactModel
from workers.venues.simulated.quotes import QuoteModel
from workers.venues.simulated.venue import SimulatedVenue

RICH = Decimal(10**9)
"""Cash enough for any order here (on margin, for short sales), so the account never decides a test."""
DEPTH = Decimal(1000)
QUOTE = QuoteModel().quote("AAPL")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_model(clock: Clock | None = None, recovery_s: float = 60.0) -> ImpactModel:
    return ImpactModel(lambda symbol, asset: DEPTH, recovery_s, clock or Clock())


def make_venue(broker: BrokerName = BrokerName.ALPACA, clock: Clock | None = None, **kwargs: Any) -> SimulatedVenue:
    return SimulatedVenue(broker, cash=RICH, account_type="margin", impact=make_model(clock), **kwargs)


def cost_against_touch(order: VenueOrder) -> Decimal:
    """What a buy paid above the undisplaced ask, in USD."""
    return sum((f.quantity * (f.price - QUOTE.ask) for f in order.fills), Decimal(0))


def test_average_price_rises_with_the_size_taken() -> None:
    """The larger the order, the higher a buy's average price and the lower a sell's."""
    model = make_model()
    sizes = [Decimal(n) for n in (1, 100, 1_000, 5_000, 20_000)]
    buys = [model.average_price("AAPL", AssetClass.EQUITY, Side.BUY, QUOTE.ask, q) for q in sizes]
    sells = [model.average_price("AAPL", AssetClass.EQUITY, Side.SELL, QUOTE.bid, q) for q in sizes]
    assert buys == sorted(buys) and len(set(buys)) == len(buys)
    assert sells == sorted(sells, reverse=True) and len(set(sells)) == len(sells)
    # 20,000 shares at 1,000 a bps walk 20 bps and pay half of it on average.
    assert buys[-1] == (QUOTE.ask * (1 + Decimal(10) / 10_000)).quantize(Decimal("0.0001"))


async def test_a_buy_pays_more_than_the_ask_and_a_sell_receives_less_than_the_bid() -> None:
    """Marketable orders fill beyond the touch once the model is on, by half the walk on average."""
    buy = await make_venue().place_order(make_intent(quantity="4000"), "c-buy")
    sell = await make_venue().place_order(make_intent(side="sell", quantity="4000"), "c-sell")
    assert buy.status is OrderStatus.FILLED and sell.status is OrderStatus.FILLED
    assert buy.average_price is not None and buy.average_price > QUOTE.ask
    assert sell.average_price is not None and sell.average_price < QUOTE.bid
    assert buy.average_price == (QUOTE.ask * (1 + Decimal(2) / 10_000)).quantize(Decimal("0.0001"))


async def test_two_brokers_each_taking_half_pay_less_than_one_broker_taking_all() -> None:
    """Each broker's book is its own, so splitting an order across two halves its impact cost."""
    whole = await make_venue(BrokerName.ALPACA).place_order(make_intent(quantity="20000"), "c-all")
    halves = [
        await make_venue(broker).place_order(make_intent(quantity="10000"), f"c-{broker}")
        for broker in (BrokerName.ALPACA, BrokerName.IBKR)
    ]
    split_cost = sum((cost_against_touch(o) for o in halves), Decimal(0))
    assert split_cost < cost_against_touch(whole)
    assert split_cost == pytest.approx(cost_against_touch(whole) / 2, rel=Decimal("0.001"))


async def test_a_second_order_at_the_same_broker_pays_the_first_ones_walk() -> None:
    """Lots and later orders start where the earlier ones left the price: one order in lots
    pays what one order in one fill pays."""
    lots = make_venue()
    lots.switch_faults({"lot_size": "1000"})
    in_lots = await lots.place_order(make_intent(quantity="4000"), "c-lots")
    at_once = await make_venue().place_order(make_intent(quantity="4000"), "c-once")
    assert len(in_lots.fills) == 4
    assert [f.price for f in in_lots.fills] == sorted(f.price for f in in_lots.fills)
    assert cost_against_touch(in_lots) == pytest.approx(cost_against_touch(at_once), abs=Decimal("0.5"))


async def test_displacement_halves_after_one_half_life_and_the_quote_shows_it() -> None:
    """A broker's price moves by the walk, shows in its quotes, and recovers with the half-life."""
    clock = Clock()
    venue = make_venue(clock=clock)
    assert venue.impact is not None
    await venue.place_order(make_intent(quantity="4000"), "c-1")
    assert venue.impact.displacement_bps("AAPL") == 4
    moved = await venue.get_quote("AAPL")
    assert moved.ask == (QUOTE.ask * (1 + Decimal(4) / 10_000)).quantize(Decimal("0.0001"))
    clock.now += 60.0
    assert venue.impact.displacement_bps("AAPL") == 2
    clock.now += 60.0
    assert venue.impact.displacement_bps("AAPL") == 1
    clock.now += 3600.0
    recovered = await venue.get_quote("AAPL")
    assert (recovered.bid, recovered.ask) == (QUOTE.bid, QUOTE.ask)
    assert (await venue.get_quote("MSFT")).ask == QuoteModel().quote("MSFT").ask  # other symbols untouched


@pytest.mark.parametrize("side", ["buy", "sell"])
@pytest.mark.parametrize("lot", [None, "700"])
async def test_a_limit_order_never_fills_beyond_its_limit_and_the_rest_stays_working(
    side: str, lot: str | None
) -> None:
    """A marketable limit takes what the book holds up to its limit (2 bps: 2,000 shares) and
    leaves the rest working; no fill crosses the limit."""
    venue = make_venue()
    if lot:
        venue.switch_faults({"lot_size": lot})
    touch = QUOTE.ask if side == "buy" else QUOTE.bid
    bps = Decimal(2) if side == "buy" else Decimal(-2)
    limit = (touch * (1 + bps / 10_000)).quantize(Decimal("0.01"))
    order = await venue.place_order(make_intent(side=side, quantity="5000", order_type="limit", limit_price=limit), "c")
    assert order.status is OrderStatus.PARTIALLY_FILLED
    assert 0 < order.filled_quantity < 5000 and order.leaves_quantity > 0
    assert order.filled_quantity == order.filled_quantity.to_integral_value()  # whole shares for a whole order
    for fill in order.fills:
        assert fill.price <= limit if side == "buy" else fill.price >= limit
    again = await venue.place_order(make_intent(side=side, quantity="100", order_type="limit", limit_price=limit), "d")
    assert again.filled_quantity == 0 and again.status is OrderStatus.ACCEPTED  # the book is used up to the limit


async def test_a_limit_at_the_touch_takes_nothing_under_the_model() -> None:
    """The book holds nothing at the touch itself, so a limit there rests (without the model it fills)."""
    order = await make_venue().place_order(
        make_intent(quantity="10", order_type="limit", limit_price=str(QUOTE.ask)), "c"
    )
    assert (order.status, order.filled_quantity) == (OrderStatus.ACCEPTED, 0)


async def test_a_duplicate_client_order_id_gives_the_walk_back() -> None:
    """A resubmission the broker answers with the original order trades nothing, so the price
    stays where the first placement left it."""
    venue = make_venue(BrokerName.COINBASE)
    assert venue.impact is not None
    intent = make_intent(symbol="BTC-USD", asset_class="crypto", quantity="3", time_in_force=None)
    first = await venue.place_order(intent, intent.intent_id)
    after_first = venue.impact.displacement_bps("BTC-USD")
    second = await venue.place_order(intent, intent.intent_id)
    assert second.broker_order_id == first.broker_order_id
    assert venue.impact.displacement_bps("BTC-USD") == after_first


ORDERS: list[dict[str, Any]] = [
    {"quantity": "20000"},
    {"side": "sell", "quantity": "20000"},
    {"quantity": None, "notional": "250000"},
    {"quantity": "20000", "order_type": "limit", "limit_price": str(QUOTE.ask + 1)},
    {"side": "sell", "quantity": "20000", "order_type": "limit", "limit_price": str(QUOTE.bid - 1)},
    {"quantity": "50", "order_type": "limit", "limit_price": "1"},
]


async def test_with_the_model_off_the_simulator_fills_at_todays_prices() -> None:
    """Off by default: a venue built from the default config fills every order at the fixed
    touch of the quote model, however large and however many, as before the model existed."""
    context = VenueContext(js=_no_bus, topology=Topology(Subjects()))
    configured = build_venue(BrokerName.ALPACA, parse_config({}), context, simulated=SimulatedVenue(BrokerName.ALPACA))
    assert isinstance(configured, SimulatedVenue) and configured.impact is None
    venue = SimulatedVenue(BrokerName.ALPACA, cash=RICH)
    venue.switch_faults({"lot_size": "3000"})
    for round_ in range(2):
        for n, fields in enumerate(ORDERS):
            intent = make_intent(**fields)
            order = await venue.place_order(intent, f"c-{round_}-{n}")
            touch = QUOTE.ask if intent.side is Side.BUY else QUOTE.bid
            expected = [] if fields.get("limit_price") == "1" else [touch]
            assert sorted({f.price for f in order.fills}) == expected
            if expected:
                assert order.status is OrderStatus.FILLED
    shown = await venue.get_quote("AAPL")
    assert (shown.bid, shown.ask) == (QUOTE.bid, QUOTE.ask)


def _no_bus() -> Any:
    raise AssertionError("no test here reaches the bus")


def test_the_factory_gives_each_simulated_broker_its_configured_depth() -> None:
    """``simulation.impact`` reaches the simulated brokers, with the broker's own depth where set."""
    config = parse_config(
        {
            "simulation": {
                "impact": {
                    "enabled": True,
                    "recovery_s": 30,
                    "symbols": {"AAPL": 5000},
                    "brokers": {"ibkr": {"symbols": {"AAPL": 8000}, "depth": {"equity": 300}}},
                }
            }
        }
    )
    context = VenueContext(js=_no_bus, topology=Topology(Subjects()))
    for broker, aapl, msft in ((BrokerName.ALPACA, 5000, 2000), (BrokerName.IBKR, 8000, 300)):
        venue = build_venue(broker, config, context)
        assert isinstance(venue, SimulatedVenue) and venue.impact is not None
        assert venue.impact.recovery_s == 30
        price = venue.impact.average_price("AAPL", AssetClass.EQUITY, Side.BUY, QUOTE.ask, Decimal(aapl) * 2)
        assert price == (QUOTE.ask * (1 + Decimal(1) / 10_000)).quantize(Decimal("0.0001"))
        ask = QuoteModel().quote("MSFT").ask
        price = venue.impact.average_price("MSFT", AssetClass.EQUITY, Side.BUY, ask, Decimal(msft) * 2)
        assert price == (ask * (1 + Decimal(1) / 10_000)).quantize(Decimal("0.0001"))


def test_depth_is_looked_up_from_the_most_specific_setting() -> None:
    """Broker and symbol, then symbol, then broker and asset class, then asset class, then the default."""
    impact = ImpactConfig.model_validate(
        {
            "depth": {"equity": 100},
            "symbols": {"AAPL": 200},
            "brokers": {"alpaca": {"depth": {"equity": 300, "crypto": 5}, "symbols": {"AAPL": 400}}},
        }
    )
    assert impact.depth_of(BrokerName.ALPACA, "AAPL", AssetClass.EQUITY) == 400
    assert impact.depth_of(BrokerName.IBKR, "AAPL", AssetClass.EQUITY) == 200
    assert impact.depth_of(BrokerName.ALPACA, "MSFT", AssetClass.EQUITY) == 300
    assert impact.depth_of(BrokerName.IBKR, "MSFT", AssetClass.EQUITY) == 100
    assert impact.depth_of(BrokerName.ALPACA, "ETH-USD", AssetClass.CRYPTO) == 5
    assert impact.depth_of(BrokerName.IBKR, "ETH-USD", AssetClass.CRYPTO) == DEFAULT_DEPTH[AssetClass.CRYPTO]


def test_the_model_is_off_by_default() -> None:
    """A config that says nothing of impact keeps the simulator's fixed prices."""
    impact = parse_config({}).simulation.impact
    assert impact.enabled is False
    assert impact.recovery_s == 60
    assert impact.depth == DEFAULT_DEPTH


@pytest.mark.parametrize(
    ("impact", "message"),
    [
        (
            {"depth": {"equity": 0}},
            "simulation.impact.depth.equity: a depth must be more than 0 (the quantity that moves the price "
            "by 1 bps), got 0",
        ),
        ({"symbols": {"AAPL": -5}}, "simulation.impact.symbols.AAPL: a depth must be more than 0"),
        ({"brokers": {"ibkr": {"symbols": {"AAPL": 0}}}}, "simulation.impact.brokers.ibkr.symbols.AAPL: a depth"),
        (
            {"recovery_s": 0},
            "simulation.impact.recovery_s: recovery_s must be more than 0 seconds (the half-life of a price "
            "displacement), got 0",
        ),
        ({"recovery_s": "nan"}, "simulation.impact.recovery_s: recovery_s must be more than 0 seconds"),
        ({"depht": {}}, "simulation.impact.depht: unknown key"),
    ],
)
def test_bad_impact_settings_are_refused_with_the_key_and_the_reason(impact: dict[str, Any], message: str) -> None:
    """Each bad setting names its key and what a good one looks like."""
    with pytest.raises(ConfigError) as info:
        parse_config({"simulation": {"impact": impact}})
    assert message in str(info.value)


async def test_a_dollar_amount_buy_spends_at_most_its_amount_impact_included() -> None:
    """A notional buy is sized so that what it pays, impact included, stays within the amount."""
    order = await make_venue().place_order(make_intent(quantity=None, notional="5000000"), "c-n")
    assert order.status is OrderStatus.FILLED
    spent = sum((f.quantity * f.price for f in order.fills), Decimal(0))
    assert Decimal(4_990_000) < spent <= Decimal(5_000_000)
    assert order.average_price is not None and order.average_price > QUOTE.ask
