"""The broker registry and how broker health feeds routing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from contracts import AssetClass, BrokerName, BrokerStatus, FillQuality, RouteDecision
from tests.builders import CRYPTO, make_intent
from workers.domain.config import MbxConfig
from workers.router.registry import HEALTH_REUSE_S, BrokerRegistry, judge
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


def verdicts(*statuses: BrokerStatus, trouble_age: float | None = None, hold: float = 30.0) -> dict[str, str]:
    """Each heard-from broker's state by ``judge``: up, down or unsure."""
    trouble = None if trouble_age is None else NOW.timestamp() - trouble_age
    health = judge({s.broker: s for s in statuses}, NOW.timestamp(), 5.0, hold, trouble)
    heard = {s.broker for s in statuses}
    return {str(b): "up" if h.up else "unsure" if h.unsure else "down" for b, h in health.items() if b in heard}


def test_one_stale_heartbeat_while_the_bus_is_healthy_is_its_broker_down() -> None:
    """A broker silent alone, with the router's own bus operations fine, is down."""
    assert verdicts(status(BrokerName.ALPACA, age=8), status(BrokerName.IBKR)) == {"alpaca": "down", "ibkr": "up"}


def test_heartbeats_gone_stale_together_are_unsure_until_the_hold_runs_out() -> None:
    """Several brokers silent since about the same moment: the bus may be why, so they are
    unsure (not down) until their silence is heartbeat timeout + hold old, then down."""
    together = verdicts(
        status(BrokerName.ALPACA, age=11), status(BrokerName.ROBINHOOD, age=10), status(BrokerName.IBKR)
    )
    assert together == {"alpaca": "unsure", "robinhood": "unsure", "ibkr": "up"}
    reason = judge(
        {BrokerName.ALPACA: status(BrokerName.ALPACA, age=11), BrokerName.SCHWAB: status(BrokerName.SCHWAB, age=11)},
        NOW.timestamp(),
        5.0,
        30.0,
    )[BrokerName.ALPACA].reason
    assert reason == "alpaca's last heartbeat is 11s old and schwab went silent with it: unsure for up to 24s more"
    expired = verdicts(status(BrokerName.ALPACA, age=36), status(BrokerName.ROBINHOOD, age=36))
    assert expired == {"alpaca": "down", "robinhood": "down"}
    apart = verdicts(status(BrokerName.ALPACA, age=8), status(BrokerName.ROBINHOOD, age=30))
    assert apart == {"alpaca": "down", "robinhood": "down"}  # went quiet 22 s apart: each its own trouble


def test_a_stale_heartbeat_is_unsure_while_the_routers_own_bus_operations_fail() -> None:
    """Bus trouble seen since a broker's last heartbeat makes its silence unsure; once the bus
    has been fine for a heartbeat timeout, a broker still silent is down."""
    assert verdicts(status(BrokerName.ALPACA, age=8), trouble_age=1) == {"alpaca": "unsure"}
    assert verdicts(status(BrokerName.ALPACA, age=8), trouble_age=6) == {"alpaca": "down"}
    assert verdicts(status(BrokerName.ALPACA, age=20), trouble_age=25) == {"alpaca": "down"}  # silent before it


def test_an_executor_that_said_its_broker_is_down_is_believed_however_old_its_word() -> None:
    """A stale record is never mistaken for a down broker, nor a down record for an unsure one:
    the heartbeat carries the executor's own view of its broker."""
    said_down = status(BrokerName.ALPACA, age=9, connected=False)
    assert verdicts(said_down, status(BrokerName.SCHWAB, age=9), trouble_age=1) == {
        "alpaca": "down",
        "schwab": "unsure",
    }
    assert verdicts(status(BrokerName.ALPACA, connected=False), trouble_age=0) == {"alpaca": "down"}


def test_the_registry_holds_for_unsure_brokers_with_the_live_bounds() -> None:
    """Bus trouble reported to the registry makes a stale broker awaited; a shorter
    ``hold_when_unsure`` (the live config) ends the wait sooner."""
    clock = [NOW.timestamp()]
    reg = BrokerRegistry(heartbeat_timeout=5.0, clock=lambda: clock[0], hold_when_unsure=30.0)
    reg.update(status(BrokerName.ALPACA, age=7))
    reg.update(status(BrokerName.IBKR))
    assert reg.awaited() == frozenset()
    reg.bus_trouble()
    assert reg.awaited() == {BrokerName.ALPACA}
    assert not reg.health(BrokerName.ALPACA).up
    reg.hold_when_unsure = 1.0
    clock[0] += HEALTH_REUSE_S
    assert reg.awaited() == frozenset()
    assert reg.status_summary()["alpaca"]["unsure"] is False
