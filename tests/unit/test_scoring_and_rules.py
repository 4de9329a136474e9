"""Explainable scoring and user routing rules."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import BrokerName, RouteDecision
from tests.builders import CRYPTO, OPTION, make_intent
from workers.domain.config import ConfigError, MbxConfig, parse_config
from workers.router.rules import MarketView, Rejection, estimate_fee, route, route_batch
from workers.router.scoring import CandidateInputs, Weights, score

DEFAULT_WEIGHTS = Weights(0.4, 0.3, 0.3)
BROKERS = list(BrokerName)


def with_rules(*rules: dict[str, Any], **routing: Any) -> MbxConfig:
    return parse_config({"routing": {"rules": list(rules), **routing}})


def decide(config: MbxConfig, price: str = "100", **overrides: Any) -> RouteDecision:
    decision = route(make_intent(**overrides), config, market=MarketView(reference_price=Decimal(price)))
    assert isinstance(decision, RouteDecision)
    return decision


def test_single_candidate_scores_full_cost_and_speed() -> None:
    """With one candidate nothing is normalised against: cost and speed are 1."""
    [only] = score([CandidateInputs(BrokerName.ALPACA, Decimal(5), 50.0, 0.5, 1)], DEFAULT_WEIGHTS)
    assert (only.cost_score, only.speed_score, only.total) == (1.0, 1.0, 0.85)


def test_ties_are_broken_by_priority_then_name() -> None:
    """Equal totals rank by configured priority, then by broker order."""
    same = [
        CandidateInputs(b, Decimal(1), 10.0, 0.5, p)
        for b, p in [(BrokerName.IBKR, 5), (BrokerName.SCHWAB, 1), (BrokerName.ALPACA, 5)]
    ]
    assert [c.broker for c in score(same, DEFAULT_WEIGHTS)] == [BrokerName.SCHWAB, BrokerName.ALPACA, BrokerName.IBKR]


candidate_lists = st.lists(
    st.builds(
        CandidateInputs,
        st.sampled_from(BROKERS),
        st.decimals(0, 100, places=2),
        st.floats(0, 1000),
        st.floats(0, 1),
        st.integers(0, 10),
    ),
    min_size=1,
    max_size=5,
    unique_by=lambda c: c.broker,
)


@settings(max_examples=300, deadline=None)
@given(candidate_lists, st.integers(0, 4), st.decimals(0, 50, places=2), st.floats(0, 500))
def test_score_never_rises_when_fee_or_latency_rises(
    candidates: list[CandidateInputs], pick: int, extra_fee: Decimal, extra_latency: float
) -> None:
    """All else equal, a dearer or slower broker never scores higher."""
    target = candidates[pick % len(candidates)]
    before = {c.broker: c.total for c in score(candidates, DEFAULT_WEIGHTS)}[target.broker]
    worse = [
        CandidateInputs(
            c.broker, c.estimated_fee + extra_fee, c.expected_latency_ms + extra_latency, c.fill_score, c.priority
        )
        if c is target
        else c
        for c in candidates
    ]
    after = {c.broker: c.total for c in score(worse, DEFAULT_WEIGHTS)}[target.broker]
    assert after <= before + 1e-9
    for c in score(candidates, DEFAULT_WEIGHTS):
        assert 0.0 <= c.total <= 1.0


def test_weights_shift_the_choice_between_cheap_and_fast() -> None:
    """Cost-heavy weights pick the cheaper broker, speed-heavy weights the faster one."""
    cheap_slow = CandidateInputs(BrokerName.SCHWAB, Decimal(0), 225.0, 0.5, 1)
    dear_fast = CandidateInputs(BrokerName.IBKR, Decimal(1), 15.0, 0.5, 1)
    assert score([cheap_slow, dear_fast], Weights(0.8, 0.1, 0.1))[0].broker is BrokerName.SCHWAB
    assert score([cheap_slow, dear_fast], Weights(0.1, 0.8, 0.1))[0].broker is BrokerName.IBKR


def test_every_candidate_carries_its_breakdown() -> None:
    """The decision lists every eligible broker with fee, latency, fill and component scores."""
    decision = decide(MbxConfig(), **CRYPTO)
    assert {c.broker for c in decision.candidates} == {
        BrokerName.COINBASE,
        BrokerName.ALPACA,
        BrokerName.ROBINHOOD,
        BrokerName.IBKR,
    }
    fees = {c.broker: c.estimated_fee for c in decision.candidates}
    # 0.01 BTC at $100: coinbase 1.2%, alpaca 0.25%, robinhood 0.85% spread, ibkr $1.75 min capped at 1%.
    assert fees == {
        BrokerName.COINBASE: Decimal("0.0120"),
        BrokerName.ALPACA: Decimal("0.0025"),
        BrokerName.ROBINHOOD: Decimal("0.0085"),
        BrokerName.IBKR: Decimal("0.0100"),
    }
    assert decision.broker is BrokerName.COINBASE  # the default still holds without rules
    assert decision.candidates[0].broker is BrokerName.ALPACA  # but alpaca scores best


def test_exclude_and_require_are_hard_constraints() -> None:
    """exclude removes brokers, require keeps only the listed ones; both are explained."""
    config = with_rules(
        {"name": "no-coinbase", "match": {"asset_class": ["crypto"]}, "exclude": ["coinbase"]},
        {"name": "big-only-ibkr-alpaca", "match": {"min_notional": 500}, "require": ["ibkr", "alpaca"]},
    )
    small = decide(config, **CRYPTO)
    assert small.broker is not BrokerName.COINBASE
    assert {e.broker: e.reason_code for e in small.excluded}[BrokerName.COINBASE] == "rule_exclude"
    big = decide(config, price="100000", **CRYPTO)  # 0.01 BTC at $100k = $1000
    assert {big.broker, *big.fallback_chain} == {BrokerName.ALPACA, BrokerName.IBKR}
    reasons = {e.broker: e.reason for e in big.excluded}
    assert "rule big-only-ibkr-alpaca requires ibkr, alpaca" in reasons[BrokerName.ROBINHOOD]


def test_prefer_rule_beats_the_default_but_not_the_strategys_own_preference() -> None:
    """Order of precedence: intent.broker, first prefer rule, smart default, score."""
    config = with_rules(
        {"name": "btc-to-alpaca", "match": {"symbol": ["BTC-*"]}, "prefer": ["alpaca"]},
        {"name": "later", "match": {"symbol": ["BTC-*"]}, "prefer": ["ibkr"]},
    )
    assert (decide(config, **CRYPTO).broker, decide(config, **CRYPTO).rule) == (BrokerName.ALPACA, "rule:btc-to-alpaca")
    assert decide(config, **{**CRYPTO, "broker": "robinhood"}).broker is BrokerName.ROBINHOOD
    assert decide(config, **{**CRYPTO, "symbol": "ETH-USD"}).broker is BrokerName.COINBASE


def test_rule_weights_override_the_config_weights() -> None:
    """A matching rule's weights replace the defaults for that order and say so."""
    config = with_rules(
        {"name": "speed-for-hft", "match": {"strategy": ["hft-*"]}, "weights": {"cost": 0.0, "speed": 1.0, "fill": 0.0}}
    )
    decision = decide(
        parse_config({"brokers": {"robinhood": {}, "schwab": {}, "ibkr": {}}, "routing": config.routing.model_dump()}),
        strategy_id="hft-1",
    )
    assert decision.rule == "score"
    assert "weights from rule speed-for-hft" in decision.reason
    assert {c.broker: c.total for c in decision.candidates}[BrokerName.SCHWAB] == 0.0


@pytest.mark.parametrize(
    ("match", "hits"),
    [
        ({"side": "sell"}, False),
        ({"side": "buy"}, True),
        ({"order_type": ["limit"]}, False),
        ({"min_quantity": 11}, False),
        ({"max_quantity": 10}, True),
        ({"max_notional": 999}, False),
        ({"strategy": ["strat*"]}, True),
        ({"symbol": ["MSFT", "AAP?"]}, True),
        ({"asset_class": ["option"]}, False),
    ],
)
def test_rule_conditions(match: dict[str, Any], hits: bool) -> None:
    """Each condition narrows the match (10 AAPL at $100 = $1000, buy, market, strat1)."""
    config = with_rules({"name": "r", "match": match, "prefer": ["ibkr"]})
    assert (decide(config).broker is BrokerName.IBKR) is hits


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"name": "idle"}, "has no action"),
        ({"name": "x", "prefer": ["etrade"]}, "rules.0.prefer.0"),
        ({"name": "x", "weights": {"cost": 1, "speed": 1, "fill": 0}}, "must be 1"),
        ({"name": "x", "match": {"colour": "red"}, "prefer": ["alpaca"]}, "rules.0.match.colour: unknown key"),
    ],
)
def test_invalid_rules_are_refused_naming_the_key(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        with_rules(rule)


def test_failed_brokers_are_skipped_and_an_exhausted_chain_is_a_rejection() -> None:
    """Failover re-routing excludes brokers that failed; when none is left the intent is rejected."""
    intent = make_intent(**OPTION)
    second = route(intent, MbxConfig(), attempt=2, failed=[BrokerName.SCHWAB])
    assert isinstance(second, RouteDecision)
    assert (second.attempt, second.failover_from) == (2, BrokerName.SCHWAB)
    assert second.broker is not BrokerName.SCHWAB
    exhausted = route(
        intent,
        MbxConfig(),
        attempt=5,
        failed=[BrokerName.SCHWAB, BrokerName.ALPACA, BrokerName.ROBINHOOD, BrokerName.IBKR],
    )
    assert isinstance(exhausted, Rejection)
    assert exhausted.reason_code == "chain_exhausted"


def test_option_fee_includes_regulatory_pass_throughs() -> None:
    """Selling 3 contracts at Schwab: $0.65 each plus ORF, OCC and FINRA TAF."""
    intent = make_intent(side="sell", **OPTION)
    fee = estimate_fee(intent, BrokerName.SCHWAB, MbxConfig(), Decimal(2))
    expected = Decimal(2) * (Decimal("0.65") + Decimal("0.02685") + Decimal("0.02") + Decimal("0.00329"))
    assert fee == expected.quantize(Decimal("0.0001"))


def test_route_batch_routes_each_intent() -> None:
    """Many intents at once give the same decisions as one at a time."""
    intents = [make_intent(), make_intent(**CRYPTO), make_intent(**OPTION)]
    batch = route_batch(intents, MbxConfig())
    assert [d.broker for d in batch if isinstance(d, RouteDecision)] == [
        BrokerName.ALPACA,
        BrokerName.COINBASE,
        BrokerName.SCHWAB,
    ]


def test_order_router_api_adds_rules_at_runtime() -> None:
    """The PRD's OrderRouter: route, route_batch and add_rule in-process."""
    from workers.domain.config import RoutingRule
    from workers.router.api import OrderRouter

    router = OrderRouter()
    assert router.route(make_intent()).broker is BrokerName.ALPACA  # type: ignore[union-attr]
    router.add_rule(RoutingRule(name="to-ibkr", prefer=[BrokerName.IBKR]))
    decision = router.route(make_intent(), Decimal(100))
    assert isinstance(decision, RouteDecision)
    assert (decision.broker, decision.rule) == (BrokerName.IBKR, "rule:to-ibkr")
    with pytest.raises(ConfigError, match="unique"):
        router.add_rule(RoutingRule(name="to-ibkr", prefer=[BrokerName.SCHWAB]))
    assert [
        d.broker
        for d in router.route_batch([make_intent(), make_intent(**CRYPTO)])  # type: ignore[union-attr]
    ] == [BrokerName.IBKR, BrokerName.IBKR]
