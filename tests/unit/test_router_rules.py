"""Where intents go: eligibility, preference, smart defaults, fallback chain."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import AssetClass, BrokerName, OrderType, RouteDecision, TimeInForce
from tests.builders import CRYPTO, FRACTIONAL, NOTIONAL, OPTION, make_intent
from workers.domain.config import MbxConfig, parse_config
from workers.router.registry import BrokerHealth
from workers.router.rules import MarketView, Rejection, route
from workers.venues.factory import resolve_config


def decide(config: MbxConfig | None = None, reference_price: str | None = None, **overrides: Any) -> RouteDecision:
    market = MarketView(reference_price=Decimal(reference_price)) if reference_price else None
    decision = route(make_intent(**overrides), config or MbxConfig(), market=market)
    assert isinstance(decision, RouteDecision)
    return decision


def test_smart_defaults_hold_when_there_are_no_rules() -> None:
    """crypto -> coinbase, option -> schwab, fractional -> robinhood, equity -> alpaca."""
    assert decide().broker is BrokerName.ALPACA
    assert decide(**CRYPTO).broker is BrokerName.COINBASE
    assert decide(**OPTION).broker is BrokerName.SCHWAB
    assert decide(**FRACTIONAL).broker is BrokerName.ROBINHOOD
    assert decide(**NOTIONAL).broker is BrokerName.ROBINHOOD


def test_eligible_preference_wins_and_an_ineligible_one_is_explained() -> None:
    """The strategy's broker preference is honoured only where that broker can take the order."""
    preferred = decide(broker="schwab")
    assert (preferred.broker, preferred.rule) == (BrokerName.SCHWAB, "preference")
    refused = decide(broker="coinbase")
    assert refused.broker is BrokerName.ALPACA
    assert "preferred coinbase is not eligible" in refused.reason


def test_disabled_default_falls_back_to_the_best_score() -> None:
    """With alpaca disabled an equity order goes to the best-scoring eligible broker.

    robinhood: free and 100 ms; schwab: free but 225 ms; ibkr: $1 minimum commission and 100 ms.
    """
    config = parse_config(
        {"brokers": {"alpaca": {"enabled": False}, "robinhood": {}, "schwab": {}, "ibkr": {}, "coinbase": {}}}
    )
    decision = decide(config, reference_price="100")  # type: ignore[arg-type]
    assert (decision.broker, decision.rule) == (BrokerName.ROBINHOOD, "score")
    assert decision.fallback_chain == (BrokerName.SCHWAB, BrokerName.IBKR)
    assert [c.broker for c in decision.candidates] == [BrokerName.ROBINHOOD, BrokerName.SCHWAB, BrokerName.IBKR]
    ibkr = decision.candidates[-1]
    assert ibkr.estimated_fee == Decimal("1.0000")
    assert (ibkr.cost_score, ibkr.speed_score) == (0.0, 1.0)


def test_fractional_equity_excludes_brokers_without_fractional_shares() -> None:
    """Schwab and IBKR do not take fractional equity through their APIs."""
    decision = decide(**FRACTIONAL)
    reasons = {e.broker: e.reason_code for e in decision.excluded}
    assert reasons[BrokerName.SCHWAB] == "unsupported_fractional"
    assert reasons[BrokerName.IBKR] == "unsupported_fractional"
    assert reasons[BrokerName.COINBASE] == "unsupported_asset"


def test_no_eligible_broker_is_a_rejection_listing_every_reason() -> None:
    """An order nobody can take is rejected with one reason per broker, not dropped."""
    outcome = route(make_intent(**OPTION), parse_config({"brokers": {"coinbase": {}}}))
    assert isinstance(outcome, Rejection)
    assert outcome.reason_code == "no_eligible_broker"
    assert {e.broker for e in outcome.excluded} == set(BrokerName)


intents = st.builds(
    make_intent,
    symbol=st.sampled_from(["AAPL", "BTC-USD", "AAPL  270115C00200000"]),
    asset_class=st.sampled_from([a.value for a in AssetClass]),
    quantity=st.sampled_from(["1", "10", "0.5", "3.25"]),
    order_type=st.just(OrderType.MARKET.value),
    time_in_force=st.sampled_from([t.value for t in TimeInForce]),
    broker=st.one_of(st.none(), st.sampled_from([b.value for b in BrokerName])),
)
configs = st.builds(
    lambda enabled, prio: parse_config(
        {"brokers": {b.value: {"enabled": e, "priority": p} for b, e, p in zip(BrokerName, enabled, prio, strict=True)}}
    ),
    st.lists(st.booleans(), min_size=5, max_size=5),
    st.lists(st.integers(0, 100), min_size=5, max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(intents, configs)
def test_decisions_are_deterministic_complete_and_never_pick_an_excluded_broker(intent: Any, config: Any) -> None:
    """Same inputs, same decision; every broker is either a candidate or excluded with a reason."""
    first, second = route(intent, config), route(intent, config)
    excluded = {e.broker for e in first.excluded}
    assert all(e.reason for e in first.excluded)
    if isinstance(first, Rejection):
        assert excluded == set(BrokerName)
        return
    assert isinstance(second, RouteDecision)
    assert first.model_dump(exclude={"created_at"}) == second.model_dump(exclude={"created_at"})
    # What goes on the wire reads back as the same decision.
    assert RouteDecision.model_validate_json(first.model_dump_json()) == first
    assert first.broker not in excluded
    assert not excluded & set(first.fallback_chain)
    assert {first.broker, *first.fallback_chain} | excluded == set(BrokerName)
    assert first.broker not in first.fallback_chain


def test_a_broker_near_its_rate_limit_is_skipped_only_while_another_can_take_the_order() -> None:
    """Rate headroom steers orders away; it never refuses an order the busy broker alone can take."""

    def health(headroom: float) -> BrokerHealth:
        return BrokerHealth(up=True, reason="", latency_ms=10.0, error_rate=0.0, rate_limit_headroom=headroom)

    busy = {BrokerName.ALPACA: health(0.01), BrokerName.IBKR: health(1.0)}
    both = parse_config({"brokers": {"alpaca": {}, "ibkr": {}}})
    decision = route(make_intent(), both, market=MarketView(health=busy))
    assert isinstance(decision, RouteDecision) and decision.broker is BrokerName.IBKR
    assert ("alpaca", "rate_limited") in {(str(e.broker), e.reason_code) for e in decision.excluded}

    alone = parse_config({"brokers": {"alpaca": {}}})
    waiting = route(make_intent(), alone, market=MarketView(health={BrokerName.ALPACA: health(0.01)}))
    assert isinstance(waiting, RouteDecision) and waiting.broker is BrokerName.ALPACA


def test_a_crypto_only_robinhood_sends_fractional_equities_to_the_next_broker_and_says_why() -> None:
    """With the robinhood_crypto adapter Robinhood takes only crypto: fractional equity, whose
    smart default it is, goes to the next eligible broker, and the decision names the reason."""
    keys = {"api_key": "k", "private_key": "p"}
    config = resolve_config(
        parse_config(
            {
                "brokers": {
                    "alpaca": {},
                    "robinhood": {"adapter": "robinhood_crypto", "credentials": keys},
                    "coinbase": {},
                }
            }
        )
    )
    decision = decide(config, **FRACTIONAL)
    assert decision.broker is BrokerName.ALPACA
    robinhood = {e.broker: e for e in decision.excluded}[BrokerName.ROBINHOOD]
    assert robinhood.reason_code == "unsupported_asset"
    assert robinhood.reason == "robinhood takes only crypto here (brokers.robinhood.assets, adapter robinhood_crypto)"
    assert "robinhood (the default) is not eligible" in decision.reason
    assert decide(config, **CRYPTO, broker="robinhood").broker is BrokerName.ROBINHOOD  # crypto still goes there
