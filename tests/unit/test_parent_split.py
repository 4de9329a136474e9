"""The router's split rule (``workers.router.split``): one slice of a parent shared among the brokers
that could route it, within each one's allocation room, buying power and holdings, ranked by their
standing, with a reason for every broker."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import BrokerName, ExposureSnapshot, OrderIntent
from tests.builders import make_intent
from workers.domain.config import MbxConfig, parse_config
from workers.platform.split_api import SplitAnswer, SplitRequest
from workers.router.registry import BrokerHealth
from workers.router.risk import RiskView
from workers.router.rules import MarketView
from workers.router.split import split_answer

A, R, C, S, IB = BrokerName.ALPACA, BrokerName.ROBINHOOD, BrokerName.COINBASE, BrokerName.SCHWAB, BrokerName.IBKR
EQUITY = (A, R, S, IB)
PRICE = Decimal(100)
UP = BrokerHealth(up=True, reason="", latency_ms=10.0)


def parent(quantity: str = "100", split: dict[str, Any] | None = None, **fields: Any) -> OrderIntent:
    return make_intent(symbol="MSFT", quantity=quantity, execution={"split": split or {}}, **fields)


def answer(
    intent: OrderIntent,
    *,
    quantity: str | None = None,
    config: MbxConfig | None = None,
    snapshot: ExposureSnapshot | None = None,
    health: dict[BrokerName, BrokerHealth] | None = None,
    unconfirmed: dict[BrokerName, Decimal] | None = None,
    risk: RiskView | None = None,
) -> SplitAnswer:
    request = SplitRequest(
        parent=intent,
        slice_number=0,
        quantity=Decimal(quantity or str(intent.quantity)),
        unconfirmed=unconfirmed or {},
    )
    market = MarketView(reference_price=PRICE, health=health if health is not None else dict.fromkeys(BrokerName, UP))
    return split_answer(request, config or MbxConfig(), market=market, risk=risk or RiskView(snapshot))


def shares(result: SplitAnswer) -> dict[BrokerName, Decimal]:
    return {c.broker: c.quantity for c in result.children}


def portfolio(value: int = 100_000, **fields: Any) -> ExposureSnapshot:
    return ExposureSnapshot(portfolio_value=Decimal(value), **fields)


def test_a_slice_is_shared_equally_among_every_broker_that_trades_it() -> None:
    """Four brokers trade equities: 100 shares go 25 to each, and Coinbase (crypto only) is told why not."""
    result = answer(parent())
    assert shares(result) == dict.fromkeys(EQUITY, Decimal(25))
    assert result.unallocated == 0
    assert any(r.startswith("coinbase: nothing: not eligible: unsupported_asset") for r in result.reasons)
    assert result.reference_price == PRICE


def test_a_broker_down_or_killed_takes_nothing_and_the_others_take_its_share() -> None:
    """Schwab is down and IBKR is under a kill switch: the 90 shares go 45 and 45 to Alpaca and Robinhood."""
    config = parse_config({"risk": {"kill_switches": {"brokers": ["ibkr"]}}})
    health = dict.fromkeys(BrokerName, UP) | {S: BrokerHealth(up=False, reason="schwab: no heartbeat")}
    result = answer(parent("90"), config=config, health=health)
    assert shares(result) == {A: Decimal(45), R: Decimal(45)}
    reasons = "\n".join(result.reasons)
    assert "schwab: nothing: not eligible: down" in reasons and "ibkr: nothing: not eligible: kill_switch" in reasons


def test_a_kill_switch_on_the_symbol_leaves_the_whole_slice_unallocated_saying_why() -> None:
    config = parse_config({"risk": {"kill_switches": {"symbols": ["MSFT"]}}})
    result = answer(parent(), config=config)
    assert result.children == () and result.unallocated == 100
    assert "kill switch" in result.unallocated_reason


def test_allocation_room_bounds_each_broker_counting_exposure_and_unconfirmed_children() -> None:
    """max_broker_allocation 10% of 100,000 USD: 10,000 USD (100 shares) per broker. Alpaca holds
    6,000 USD and has 20 shares of this parent unconfirmed: room for 20; the rest share 380 - 20."""
    config = parse_config({"risk": {"max_broker_allocation": "0.1"}})
    snapshot = portfolio(by_broker={A: Decimal(6_000)})
    result = answer(parent("320"), config=config, snapshot=snapshot, unconfirmed={A: Decimal(20)})
    assert shares(result) == {A: Decimal(20), R: Decimal(100), S: Decimal(100), IB: Decimal(100)}
    assert result.unallocated == 0
    assert any(r.startswith("alpaca: 20 of 320") and "allocation room" in r for r in result.reasons)


def test_what_no_broker_has_room_for_is_left_unallocated_with_the_reason() -> None:
    config = parse_config({"risk": {"max_broker_allocation": "0.1"}})
    result = answer(parent("500"), config=config, snapshot=portfolio())
    assert sum(shares(result).values()) == 400 and result.unallocated == 100
    assert "left" in result.unallocated_reason


def test_buying_power_bounds_a_buy_at_its_limit_price() -> None:
    """Robinhood can spend 1,000 USD: at a limit of 125 that is 8 shares; the others share the rest."""
    snapshot = portfolio(buying_power={R: Decimal(1_000)})
    result = answer(parent("80", order_type="limit", limit_price="125"), snapshot=snapshot)
    assert shares(result)[R] == 8
    assert sum(shares(result).values()) == 80


def test_a_sell_that_closes_a_long_goes_to_the_holders_each_at_most_what_it_holds() -> None:
    """IBKR holds 30 and Schwab 50 MSFT: a sell of 70 goes 30 / 40 (equal shares, IBKR full), none to a
    broker holding none, and no allocation limit applies to a closing order."""
    config = parse_config({"risk": {"max_broker_allocation": "0.01"}})
    snapshot = portfolio(
        holdings={IB: {"MSFT": Decimal(30)}, S: {"MSFT": Decimal(50)}}, positions={"MSFT": Decimal(80)}
    )
    result = answer(parent("70", side="sell"), config=config, snapshot=snapshot)
    assert shares(result) == {IB: Decimal(30), S: Decimal(40)}
    assert any(r.startswith("alpaca: nothing: it holds none") for r in result.reasons)


def test_a_closing_sell_counts_the_parents_unconfirmed_children_against_the_holding() -> None:
    snapshot = portfolio(
        holdings={IB: {"MSFT": Decimal(30)}, S: {"MSFT": Decimal(50)}}, positions={"MSFT": Decimal(80)}
    )
    result = answer(parent("40", side="sell"), snapshot=snapshot, unconfirmed={S: Decimal(45)})
    assert shares(result) == {IB: Decimal(30), S: Decimal(5)}
    assert result.unallocated == 5


def test_position_effect_close_with_nothing_held_is_refused_whole() -> None:
    result = answer(parent(side="sell", position_effect="close"), snapshot=portfolio(holdings={}, positions={}))
    assert result.children == () and "position_effect close" in result.unallocated_reason


def test_max_brokers_keeps_the_best_ranked() -> None:
    """max_brokers 2: the two best-scoring brokers take the slice; the others are told why not."""
    result = answer(parent("10", split={"max_brokers": 2}))
    assert len(result.children) == 2 and sum(shares(result).values()) == 10
    assert sum("max_brokers 2 reached" in r for r in result.reasons) == 2


def test_an_intent_that_does_not_split_is_answered_with_an_error() -> None:
    twap = make_intent(quantity="20", execution={"twap": {"duration_s": 20, "slices": 2}})
    assert "does not split" in answer(twap).error


@settings(max_examples=60, deadline=None)
@given(
    quantity=st.integers(1, 5_000),
    exposure=st.lists(st.integers(0, 12_000), min_size=4, max_size=4),
    unconfirmed=st.lists(st.integers(0, 60), min_size=4, max_size=4),
)
def test_no_broker_is_given_more_than_its_allocation_allows(
    quantity: int, exposure: list[int], unconfirmed: list[int]
) -> None:
    """Whatever the exposures and unconfirmed children, a child never takes a broker past
    max_broker_allocation at the price the split sizes with, and children plus the unallocated
    quantity add up to the slice."""
    config = parse_config({"risk": {"max_broker_allocation": "0.1"}})
    snapshot = portfolio(by_broker={b: Decimal(e) for b, e in zip(EQUITY, exposure, strict=True)})
    waiting = {b: Decimal(u) for b, u in zip(EQUITY, unconfirmed, strict=True)}
    result = answer(parent(str(quantity)), config=config, snapshot=snapshot, unconfirmed=waiting)
    assert sum(shares(result).values()) + result.unallocated == quantity
    for broker, share in shares(result).items():
        used = snapshot.by_broker.get(broker, Decimal(0)) + waiting[broker] * PRICE
        assert used + share * PRICE <= Decimal(10_000), broker
