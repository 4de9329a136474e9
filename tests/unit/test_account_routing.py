"""Routing by what each account holds and can pay for: closing orders go to the holder, shorts
only where asked and allowed, no broker gets an order its buying power cannot pay for."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import BrokerName, ExposureSnapshot, RouteDecision
from tests.builders import make_intent
from workers.domain.config import MbxConfig, parse_config
from workers.router.risk import RiskView
from workers.router.rules import MarketView, Rejection, route
from workers.router.state import RouterState

PRICE = MarketView(reference_price=Decimal(100))  # 10 shares = $1,000
ALPACA, IBKR, SCHWAB = BrokerName.ALPACA, BrokerName.IBKR, BrokerName.SCHWAB


def snapshot(
    holdings: dict[BrokerName, dict[str, Any]] | None = None,
    buying_power: dict[BrokerName, Any] | None = None,
    **fields: Any,
) -> ExposureSnapshot:
    return ExposureSnapshot(
        portfolio_value=Decimal(fields.pop("portfolio_value", 100_000)),
        holdings={b: {s: Decimal(q) for s, q in held.items()} for b, held in (holdings or {}).items()},
        buying_power={b: Decimal(v) for b, v in (buying_power or {}).items()},
        **fields,
    )


def decide(
    view: RiskView | ExposureSnapshot, config: MbxConfig | None = None, **intent: Any
) -> RouteDecision | Rejection:
    risk = view if isinstance(view, RiskView) else RiskView(view)
    return route(make_intent(**intent), config or MbxConfig(), market=PRICE, risk=risk)


def codes(outcome: RouteDecision | Rejection) -> dict[BrokerName, str]:
    return {e.broker: e.reason_code for e in outcome.excluded}


def test_a_sell_of_a_held_long_goes_to_the_broker_that_holds_it() -> None:
    """IBKR holds 10 MSFT: a sell of 10 without a preference closes it there, not at the default alpaca."""
    decision = decide(snapshot({IBKR: {"MSFT": 10}}), symbol="MSFT", side="sell")
    assert isinstance(decision, RouteDecision)
    assert (decision.broker, decision.rule, decision.closes_position) == (IBKR, "position", Decimal(10))
    assert "MSFT position ibkr holds" in decision.reason
    assert codes(decision)[ALPACA] == "position_elsewhere"


def test_a_sell_goes_to_the_holder_with_the_most_that_covers_it() -> None:
    """Of three holders, the one with the most takes the sell; one too small to cover it is left out."""
    held = snapshot({ALPACA: {"MSFT": 5}, IBKR: {"MSFT": 20}, SCHWAB: {"MSFT": 12}})
    decision = decide(held, symbol="MSFT", side="sell")
    assert isinstance(decision, RouteDecision)
    assert decision.broker is IBKR
    assert decision.fallback_chain == (SCHWAB,)
    assert codes(decision)[ALPACA] == "position_elsewhere"


def test_a_sell_larger_than_any_holders_position_is_refused_with_each_holders_quantity() -> None:
    """No one broker holds 10: the sell is refused at once, naming what each holder has."""
    refused = decide(snapshot({ALPACA: {"MSFT": 5}, IBKR: {"MSFT": 8}}), symbol="MSFT", side="sell")
    assert isinstance(refused, Rejection)
    assert refused.reason_code == "insufficient_position"
    assert "alpaca holds 5" in refused.reason and "ibkr holds 8" in refused.reason


def test_sells_in_flight_count_against_the_position_they_close() -> None:
    """A sell routed and not yet in a snapshot leaves less to close: a second sell of the same 10 is refused."""
    state = RouterState(MbxConfig())
    state.snapshot = snapshot({IBKR: {"MSFT": 10}})
    first = decide(state.risk_view(), symbol="MSFT", side="sell")
    assert isinstance(first, RouteDecision) and first.broker is IBKR
    state.record(first, Decimal(100))
    second = decide(state.risk_view(), symbol="MSFT", side="sell")
    assert isinstance(second, Rejection) and second.reason_code == "insufficient_position"


def test_a_broker_over_its_allocation_still_takes_a_sell_that_shrinks_it() -> None:
    """Alpaca holds 85% of a 100,000 USD portfolio: a buy is kept away by max_broker_allocation, a sell of
    what it holds goes there."""
    view = snapshot({ALPACA: {"MSFT": 255}}, by_broker={ALPACA: Decimal(85_000)})
    buy = decide(view, symbol="MSFT", side="buy", broker="alpaca")
    assert isinstance(buy, RouteDecision) and codes(buy)[ALPACA] == "max_broker_allocation"
    sell = decide(view, symbol="MSFT", side="sell")
    assert isinstance(sell, RouteDecision) and sell.broker is ALPACA
    assert sell.closes_position == Decimal(255)


def test_a_closing_order_shrinks_the_exposure_routed_in_flight() -> None:
    """A routed sell that closes a position lowers the broker's in-flight exposure instead of adding to it."""
    state = RouterState(MbxConfig())
    state.snapshot = snapshot({ALPACA: {"MSFT": 255}}, by_broker={ALPACA: Decimal(85_000)})
    sell = decide(state.risk_view(), symbol="MSFT", side="sell")
    assert isinstance(sell, RouteDecision)
    state.record(sell, Decimal(100))
    assert state.risk_view().broker_exposure(ALPACA) == Decimal(84_000)


def test_a_short_is_opened_only_when_the_intent_asks_and_the_account_allows_it() -> None:
    """A sell of a symbol held nowhere: refused at cash accounts; with position_effect open it goes to a margin
    account; a margin account with allow_short takes it unasked."""
    nothing = snapshot()
    refused = decide(nothing, symbol="TSLA", side="sell")
    assert isinstance(refused, Rejection)
    assert set(codes(refused).values()) <= {"short_not_allowed", "unsupported_asset"}
    margin = parse_config({"brokers": {"ibkr": {"account_type": "margin"}}})
    unasked = decide(nothing, margin, symbol="TSLA", side="sell")
    assert isinstance(unasked, Rejection) and codes(unasked)[IBKR] == "short_not_requested"
    asked = decide(nothing, margin, symbol="TSLA", side="sell", position_effect="open")
    assert isinstance(asked, RouteDecision) and asked.broker is IBKR and asked.closes_position is None
    allowed = parse_config({"brokers": {"ibkr": {"account_type": "margin", "allow_short": True}}})
    unasked_allowed = decide(nothing, allowed, symbol="TSLA", side="sell")
    assert isinstance(unasked_allowed, RouteDecision) and unasked_allowed.broker is IBKR


def test_position_effect_close_without_a_position_is_refused() -> None:
    """An order that must close refuses at once when nothing it could reduce is held."""
    refused = decide(snapshot({IBKR: {"MSFT": 10}}), symbol="MSFT", side="buy", position_effect="close")
    assert isinstance(refused, Rejection) and refused.reason_code == "no_position"


def test_a_buy_that_covers_a_short_goes_to_the_broker_short_of_it() -> None:
    """Schwab is short 10 MSFT: a buy of 10 covers it there."""
    decision = decide(snapshot({SCHWAB: {"MSFT": -10}}), symbol="MSFT", side="buy")
    assert isinstance(decision, RouteDecision)
    assert (decision.broker, decision.closes_position) == (SCHWAB, Decimal(-10))


def test_a_buy_larger_than_the_one_short_held_covers_it_and_goes_long_there() -> None:
    """Schwab is short 10 MSFT: a buy of 25 goes to Schwab (covers 10, long 15 there), not elsewhere."""
    decision = decide(snapshot({SCHWAB: {"MSFT": -10}}), symbol="MSFT", side="buy", quantity="25")
    assert isinstance(decision, RouteDecision)
    assert (decision.broker, decision.closes_position) == (SCHWAB, Decimal(-10))
    several = decide(snapshot({SCHWAB: {"MSFT": -10}, IBKR: {"MSFT": -5}}), symbol="MSFT", side="buy", quantity="25")
    assert isinstance(several, Rejection) and several.reason_code == "insufficient_position"


def test_a_sell_right_after_its_buy_closes_what_the_buy_bought_before_any_snapshot_shows_it() -> None:
    """A buy of 10 MSFT routed to IBKR, its fill in no snapshot yet: a sell of 4 closes it there
    (it was refused as a short at a cash account), and a sell of 20 is refused with IBKR's 10."""
    state = RouterState(MbxConfig())
    state.snapshot = snapshot({})
    bought = decide(state.risk_view(), symbol="MSFT", broker="ibkr")
    assert isinstance(bought, RouteDecision) and bought.broker is IBKR
    state.record(bought, Decimal(100))
    sold = decide(state.risk_view(), symbol="MSFT", side="sell", quantity="4")
    assert isinstance(sold, RouteDecision) and (sold.broker, sold.closes_position) == (IBKR, Decimal(10))
    state.record(sold, Decimal(100))
    too_many = decide(state.risk_view(), symbol="MSFT", side="sell", quantity="20")
    assert isinstance(too_many, Rejection) and too_many.reason_code == "insufficient_position"
    assert "ibkr holds 6" in too_many.reason


def test_a_buy_against_a_short_that_buys_in_flight_cover_opens_a_long() -> None:
    """Alpaca's snapshot is short 10 AAPL and a buy of 10 is routed there: the next buy closes
    nothing (it was refused as closing a position that 'alpaca holds 0' of)."""
    state = RouterState(MbxConfig())
    state.snapshot = snapshot({ALPACA: {"AAPL": -10}})
    first = decide(state.risk_view(), symbol="AAPL", side="buy")
    assert isinstance(first, RouteDecision) and first.broker is ALPACA
    state.record(first, Decimal(100))
    second = decide(state.risk_view(), symbol="AAPL", side="buy")
    assert isinstance(second, RouteDecision) and second.closes_position is None
    closing = decide(state.risk_view(), symbol="AAPL", side="buy", position_effect="close")
    assert isinstance(closing, Rejection) and closing.reason_code == "no_position"


def test_positions_unknown_steer_nothing() -> None:
    """Without an exposure snapshot the router knows no positions: a sell routes as before, to the default."""
    decision = route(make_intent(side="sell"), MbxConfig(), market=PRICE)
    assert isinstance(decision, RouteDecision) and decision.broker is ALPACA


def test_a_broker_short_of_buying_power_is_excluded_with_its_figures() -> None:
    """Alpaca can spend 500 USD and the order needs 1,000: it is left out with both figures; ibkr takes it."""
    decision = decide(snapshot(buying_power={ALPACA: 500, IBKR: 50_000}))
    assert isinstance(decision, RouteDecision) and decision.broker is not ALPACA
    [short] = [e for e in decision.excluded if e.broker is ALPACA]
    assert short.reason_code == "insufficient_buying_power"
    assert "500.00" in short.reason and "1000.00" in short.reason
    figures = {c.broker: c.buying_power for c in decision.candidates}
    assert figures[IBKR] == Decimal(50_000)


def test_an_order_no_account_can_pay_is_rejected_with_every_brokers_figure() -> None:
    """Every known account is short of the order's cash: the router rejects it itself, naming each figure."""
    poor = {b: 10 * (k + 1) for k, b in enumerate(BrokerName)}
    refused = decide(snapshot(buying_power=poor))
    assert isinstance(refused, Rejection)
    assert refused.reason_code == "insufficient_buying_power"
    for broker, power in poor.items():
        assert f"{broker} can spend {power:.2f} USD" in refused.reason


def test_a_broker_without_an_account_figure_is_not_checked_and_the_decision_says_so() -> None:
    """Only ibkr's account is known (and short): the default alpaca takes the order, its candidate record has
    no figure and the reason says it was not checked."""
    decision = decide(snapshot(buying_power={IBKR: 10}))
    assert isinstance(decision, RouteDecision) and decision.broker is ALPACA
    assert {c.broker: c.buying_power for c in decision.candidates}[ALPACA] is None
    assert "no account figure yet for alpaca" in decision.reason
    assert codes(decision)[IBKR] == "insufficient_buying_power"


def test_buys_in_flight_spend_the_buying_power() -> None:
    """Two orders of 600 USD where 1,000 is left: the first goes to alpaca, the second elsewhere."""
    state = RouterState(MbxConfig())
    state.snapshot = snapshot(buying_power={ALPACA: 1_000, IBKR: 100_000})
    first = decide(state.risk_view(), quantity="6")
    assert isinstance(first, RouteDecision) and first.broker is ALPACA
    state.record(first, Decimal(100))
    second = decide(state.risk_view(), quantity="6")
    assert isinstance(second, RouteDecision) and second.broker is not ALPACA
    assert codes(second)[ALPACA] == "insufficient_buying_power"


def test_a_sell_of_a_held_position_is_never_excluded_for_cash() -> None:
    """IBKR has no buying power left, yet the sell of its position goes there."""
    decision = decide(snapshot({IBKR: {"MSFT": 10}}, buying_power={IBKR: 0}), symbol="MSFT", side="sell")
    assert isinstance(decision, RouteDecision) and decision.broker is IBKR


positions = st.dictionaries(
    st.sampled_from([ALPACA, IBKR, SCHWAB]), st.integers(min_value=-50, max_value=50), max_size=3
)


@settings(max_examples=300, deadline=None)
@given(positions, st.integers(min_value=1, max_value=60), st.sampled_from(["buy", "sell"]))
def test_an_order_that_reduces_a_position_goes_only_to_a_holder_that_covers_it(
    held: dict[BrokerName, int], quantity: int, side: str
) -> None:
    """Whatever is held where, an order against a held position lands at the largest covering holder, or is
    refused naming every holder; one against nothing held opens only where the account allows it."""
    view = snapshot({b: {"MSFT": q} for b, q in held.items()})
    outcome = decide(view, symbol="MSFT", side=side, quantity=str(quantity))
    sign = 1 if side == "sell" else -1
    reducible = {b: abs(q) for b, q in held.items() if q * sign > 0}
    covering = {b: q for b, q in reducible.items() if q >= quantity}
    if covering:
        assert isinstance(outcome, RouteDecision)
        assert outcome.broker in covering and covering[outcome.broker] == max(covering.values())
        assert outcome.closes_position == held[outcome.broker]
    elif side == "buy" and len(reducible) == 1:  # covers the one short and goes long there
        assert isinstance(outcome, RouteDecision) and outcome.broker in reducible
    elif reducible:
        assert isinstance(outcome, Rejection) and outcome.reason_code == "insufficient_position"
        assert all(f"{b} holds {held[b]}" in outcome.reason for b in reducible)
    elif side == "sell":
        assert isinstance(outcome, Rejection)  # every paper account is a cash account
    else:
        assert isinstance(outcome, RouteDecision) and outcome.closes_position is None
