"""The broker registry and how broker health feeds routing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from contracts import AssetClass, BrokerName, BrokerStatus, FillQuality, RouteDecision
from tests.builders import CRYPTO, make_intent
from workers.domain.config import MbxConfig
from workers.router.registry import BrokerRegistry
from workers.router.rules import route
from workers.router.state import RouterState

NOW = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)


def status(
    broker: BrokerName,
    *,
    age: float = 0.0,
    connected: bool = True,
    latency: float = 10.0,
    headroom: float = 1.0,
    errors: float = 0.0,
) -> BrokerStatus:
    return BrokerStatus(
        broker=broker,
        connected=connected,
        latency_ms=latency,
        error_rate=errors,
        rate_limit_headroom=headroom,
        last_seen=NOW - timedelta(seconds=age),
    )


def registry(*statuses: BrokerStatus) -> BrokerRegistry:
    reg = BrokerRegistry(heartbeat_timeout=5.0, clock=NOW.timestamp)
    for s in statuses:
        reg.update(s)
    return reg


def test_stale_disconnected_and_silent_brokers_are_down() -> None:
    reg = registry(
        status(BrokerName.ALPACA), status(BrokerName.SCHWAB, age=6), status(BrokerName.IBKR, connected=False)
    )
    assert reg.get_connected() == [BrokerName.ALPACA]
    assert "6s old" in reg.health(BrokerName.SCHWAB).reason
    assert "disconnected" in reg.health(BrokerName.IBKR).reason
    refused = registry(status(BrokerName.IBKR, connected=False).model_copy(update={"reason": "keys refused (401)"}))
    assert refused.health(BrokerName.IBKR).reason == "ibkr is down: keys refused (401)"
    assert "no heartbeat" in reg.health(BrokerName.COINBASE).reason


def test_an_older_heartbeat_never_replaces_a_newer_one() -> None:
    reg = registry(status(BrokerName.ALPACA, latency=5), status(BrokerName.ALPACA, age=3, connected=False))
    assert reg.health(BrokerName.ALPACA).up


def test_seed_api_register_unregister_and_queries() -> None:
    """register / unregister / get_by_asset / get_best_for / status_summary, as the PRD names them."""
    reg = registry(
        status(BrokerName.ALPACA, latency=20),
        status(BrokerName.COINBASE, latency=8),
        status(BrokerName.IBKR, latency=50, errors=0.0),
        status(BrokerName.SCHWAB),
    )
    reg.register(BrokerName.ROBINHOOD, adapter="sim", priority=3)
    assert reg.get_by_asset(AssetClass.CRYPTO) == [BrokerName.ALPACA, BrokerName.COINBASE, BrokerName.IBKR]
    assert reg.get_best_for(AssetClass.CRYPTO) is BrokerName.COINBASE
    assert reg.get_best_for(AssetClass.OPTION, "latency") is BrokerName.SCHWAB
    summary = reg.status_summary()
    assert summary["robinhood"]["up"] is False
    assert summary["alpaca"]["assets"] == ["crypto", "equity", "option"]
    reg.unregister(BrokerName.COINBASE)
    assert BrokerName.COINBASE not in reg.get_connected()
    assert reg.get_best_for(AssetClass.CRYPTO) is BrokerName.ALPACA


def test_down_and_rate_limited_brokers_are_excluded_with_reasons() -> None:
    """Routing never picks a broker that is down or nearly out of rate budget."""
    state = RouterState(
        MbxConfig(),
        registry=registry(
            status(BrokerName.ALPACA), status(BrokerName.ROBINHOOD, headroom=0.01), status(BrokerName.IBKR, age=60)
        ),
    )
    decision = route(make_intent(), state.config, market=state.market(Decimal(100)))
    assert isinstance(decision, RouteDecision)
    reasons = {e.broker: e.reason_code for e in decision.excluded}
    assert reasons[BrokerName.ROBINHOOD] == "rate_limited"
    assert reasons[BrokerName.IBKR] == "down"
    assert reasons[BrokerName.SCHWAB] == "down"
    assert decision.broker is BrokerName.ALPACA
    assert decision.candidates[0].expected_latency_ms == 10.0  # measured, not the configured prior


def test_measured_fill_quality_replaces_the_prior_once_there_are_enough_samples() -> None:
    every = [status(b) for b in BrokerName]
    state = RouterState(MbxConfig(), registry=registry(*every))
    state.apply_fill_quality(FillQuality(broker=BrokerName.COINBASE, fill_score=0.9, samples=10))
    state.apply_fill_quality(FillQuality(broker=BrokerName.ALPACA, fill_score=0.2, samples=500))
    decision = route(make_intent(**CRYPTO), state.config, market=state.market(Decimal(100)))
    assert isinstance(decision, RouteDecision)
    scores = {c.broker: c.fill_score for c in decision.candidates}
    assert scores[BrokerName.COINBASE] == 0.5  # 10 samples < 50: still the prior
    assert scores[BrokerName.ALPACA] == 0.2


def test_a_broker_not_heard_from_since_the_grace_began_is_starting_until_it_speaks_or_time_runs_out() -> None:
    """After a (re)start, a silent or stale broker is *starting* for the grace period; one fresh
    heartbeat ends that, and so does the end of the period."""
    clock = [NOW.timestamp()]
    reg = BrokerRegistry(heartbeat_timeout=5.0, clock=lambda: clock[0])
    reg.update(status(BrokerName.ALPACA, age=8))  # last heard before NATS went away
    reg.begin_grace(10.0, [BrokerName.ALPACA, BrokerName.SCHWAB, BrokerName.IBKR])
    reg.update(status(BrokerName.IBKR, age=0.2))  # beating right through: counts
    assert reg.starting() == {BrokerName.ALPACA, BrokerName.SCHWAB}
    clock[0] += 1
    reg.update(status(BrokerName.ALPACA, age=-1))
    assert reg.starting() == {BrokerName.SCHWAB}
    clock[0] += 9.5
    assert reg.starting() == frozenset()
    assert not reg.health(BrokerName.SCHWAB).up
