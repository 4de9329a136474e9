"""Which broker gets an intent, and why. Pure: no I/O.

0. **Risk** (``risk.py``): kill switches and intent-level limits may deny the intent outright.
1. **Eligibility**: a broker must be configured, enabled, and support the intent's asset class,
   order type, time in force, and fractional or dollar-amount size; brokers that already failed
   this intent, killed brokers and brokers over their allocation limits are out too. A broker
   near its rate limit is left out only while another broker can take the order (otherwise
   the order waits for its budget). Every broker left out is listed with its reason.
2. **User rules** (``routing.rules``, in config order) that match the intent apply together:
   ``exclude`` removes brokers, ``require`` keeps only the listed ones (both hard constraints);
   the first matching rule with ``weights`` sets the scoring weights; the first matching rule
   with ``prefer`` names the preferred brokers.
3. **Scoring** ranks every eligible broker by cost, speed and fill quality (``scoring.py``).
4. **Choice**, first that applies: the intent's own ``broker`` preference; the first eligible
   broker of the first matching ``prefer`` rule; the smart default (crypto -> coinbase,
   option -> schwab, fractional equity -> robinhood, equity -> alpaca), the lowest rule layer;
   otherwise the best score. The fallback chain is every other eligible broker, best score
   first.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from contracts import (
    AssetClass,
    BrokerName,
    CandidateScore,
    ExcludedBroker,
    OrderIntent,
    OrderType,
    RouteDecision,
    Side,
)
from workers.fees import commission, traded_value
from workers.router.registry import BrokerHealth
from workers.router.risk import RiskView, broker_exclusion, deny, diversification_exclusions
from workers.router.scoring import CandidateInputs, Weights, score
from workers.settings import MbxConfig, RoutingConfig, RoutingRule
from workers.venues.capabilities import CAPABILITIES


@dataclass(frozen=True, slots=True)
class Rejection:
    """No broker can take the intent."""

    reason_code: str
    reason: str
    excluded: tuple[ExcludedBroker, ...]


@dataclass(frozen=True, slots=True)
class MarketView:
    """What the router knows of the market and the brokers right now.

    ``health`` is None when nothing is known of the brokers' state (every broker is taken to be
    up, as in a preview without executors); otherwise a broker that is down, or whose rate
    budget is nearly spent, is not eligible.
    """

    reference_price: Decimal | None = None
    health: Mapping[BrokerName, BrokerHealth] | None = None
    fill_scores: Mapping[BrokerName, float] = field(default_factory=dict)


def smart_default(intent: OrderIntent) -> tuple[BrokerName, str]:
    """The default broker for an intent and the name of the rule that picks it."""
    if intent.asset_class is AssetClass.CRYPTO:
        return BrokerName.COINBASE, "default:crypto"
    if intent.asset_class is AssetClass.OPTION:
        return BrokerName.SCHWAB, "default:option"
    if intent.is_fractional:
        return BrokerName.ROBINHOOD, "default:fractional"
    return BrokerName.ALPACA, "default:equity"


def exclusion(intent: OrderIntent, broker: BrokerName, config: MbxConfig) -> ExcludedBroker | None:
    """Why ``broker`` cannot take ``intent``, or None when it can."""
    key = (
        broker,
        intent.asset_class,
        intent.order_type,
        intent.time_in_force,
        intent.notional is not None,
        intent.is_fractional,
    )
    cache = _exclusion_cache(config)
    if key not in cache:
        cache[key] = _exclusion(intent, broker, config)
    return cache[key]


_EXCLUSIONS: dict[int, tuple[MbxConfig, dict[tuple[Any, ...], ExcludedBroker | None]]] = {}


def _exclusion_cache(config: MbxConfig) -> dict[tuple[Any, ...], ExcludedBroker | None]:
    """Capability and enablement answers depend only on the order's shape: cache them per config."""
    cached = _EXCLUSIONS.get(id(config))
    if cached is not None and cached[0] is config:
        return cached[1]
    if len(_EXCLUSIONS) > 16:
        _EXCLUSIONS.clear()
    fresh: dict[tuple[Any, ...], ExcludedBroker | None] = {}
    _EXCLUSIONS[id(config)] = (config, fresh)
    return fresh


def _exclusion(intent: OrderIntent, broker: BrokerName, config: MbxConfig) -> ExcludedBroker | None:
    broker_config = config.brokers.get(broker)
    if broker_config is None:
        return ExcludedBroker(
            broker=broker, reason_code="not_configured", reason=f"{broker} is not in the config's brokers section"
        )
    if not broker_config.enabled:
        return ExcludedBroker(broker=broker, reason_code="disabled", reason=f"{broker} is not enabled")
    support = CAPABILITIES[broker].support_for(intent.asset_class)
    if support is None:
        return ExcludedBroker(
            broker=broker, reason_code="unsupported_asset", reason=f"{broker} does not trade {intent.asset_class}"
        )
    if intent.order_type not in support.order_types:
        return ExcludedBroker(
            broker=broker,
            reason_code="unsupported_order_type",
            reason=f"{broker} has no {intent.order_type} orders for {intent.asset_class}",
        )
    if intent.time_in_force not in support.time_in_force:
        return ExcludedBroker(
            broker=broker,
            reason_code="unsupported_time_in_force",
            reason=f"{broker} has no {intent.time_in_force} orders for {intent.asset_class}",
        )
    if intent.notional is not None and not support.notional:
        return ExcludedBroker(
            broker=broker,
            reason_code="unsupported_notional",
            reason=f"{broker} does not take dollar-amount {intent.asset_class} orders",
        )
    if intent.is_fractional and not support.fractional:
        return ExcludedBroker(
            broker=broker,
            reason_code="unsupported_fractional",
            reason=f"{broker} does not take fractional {intent.asset_class} quantities",
        )
    return None


def order_size(intent: OrderIntent, price: Decimal | None) -> tuple[Decimal | None, Decimal | None]:
    """(quantity, notional in USD) as far as the price allows."""
    if intent.quantity is not None:
        value = traded_value(intent.asset_class, intent.quantity, price) if price else None
        return intent.quantity, value
    assert intent.notional is not None
    return (intent.notional / price if price else None), intent.notional


StaticCheck = Callable[[OrderIntent], bool]
RangeCheck = Callable[[Decimal | None, Decimal | None], bool]
_Key = tuple[str, str, AssetClass, Side, OrderType]


class RuleSet:
    """A config's rules, compiled once: glob patterns become regexes, and the conditions that
    depend only on symbol, strategy, asset class, side and order type are evaluated once per
    distinct combination (a bounded cache), leaving only size ranges to check per order."""

    CACHE_LIMIT = 50_000

    def __init__(self, rules: Sequence[RoutingRule]) -> None:
        self._rules = [(rule, _static_check(rule), _range_check(rule)) for rule in rules]
        self._by_key: dict[_Key, list[tuple[RoutingRule, RangeCheck | None]]] = {}

    def matching(self, intent: OrderIntent, quantity: Decimal | None, notional: Decimal | None) -> list[RoutingRule]:
        key = (intent.symbol, intent.strategy_id, intent.asset_class, intent.side, intent.order_type)
        candidates = self._by_key.get(key)
        if candidates is None:
            if len(self._by_key) >= self.CACHE_LIMIT:
                self._by_key.clear()
            candidates = [(rule, ranges) for rule, static, ranges in self._rules if static(intent)]
            self._by_key[key] = candidates
        return [rule for rule, ranges in candidates if ranges is None or ranges(quantity, notional)]


def _static_check(rule: RoutingRule) -> StaticCheck:
    m = rule.match
    checks: list[StaticCheck] = []
    if m.asset_class is not None:
        assets = frozenset(m.asset_class)
        checks.append(lambda i: i.asset_class in assets)
    if m.side is not None:
        side = m.side
        checks.append(lambda i: i.side is side)
    if m.order_type is not None:
        types = frozenset(m.order_type)
        checks.append(lambda i: i.order_type in types)
    if m.symbol is not None:
        symbols = re.compile("|".join(fnmatch.translate(p) for p in m.symbol))
        checks.append(lambda i: symbols.match(i.symbol) is not None)
    if m.strategy is not None:
        strategies = re.compile("|".join(fnmatch.translate(p) for p in m.strategy))
        checks.append(lambda i: strategies.match(i.strategy_id) is not None)
    return lambda i: all(check(i) for check in checks)


def _range_check(rule: RoutingRule) -> RangeCheck | None:
    m = rule.match
    if m.min_quantity is None and m.max_quantity is None and m.min_notional is None and m.max_notional is None:
        return None

    def within(value: Decimal | None, low: Decimal | None, high: Decimal | None) -> bool:
        if low is None and high is None:
            return True
        if value is None:
            return False
        return (low is None or value >= low) and (high is None or value <= high)

    return lambda q, n: within(q, m.min_quantity, m.max_quantity) and within(n, m.min_notional, m.max_notional)


_RULE_SETS: dict[int, tuple[RoutingConfig, RuleSet]] = {}


def rule_set(routing: RoutingConfig) -> RuleSet:
    """The compiled rules of a routing config, built once per config object."""
    cached = _RULE_SETS.get(id(routing))
    if cached is not None and cached[0] is routing:
        return cached[1]
    if len(_RULE_SETS) > 16:  # configs change rarely; keep only a few recent ones
        _RULE_SETS.clear()
    compiled = RuleSet(routing.rules)
    _RULE_SETS[id(routing)] = (routing, compiled)
    return compiled


def estimate_fee(intent: OrderIntent, broker: BrokerName, config: MbxConfig, price: Decimal | None) -> Decimal:
    """Commission plus regulatory fees in USD; value-based parts are 0 when no price is known."""
    quantity, _ = order_size(intent, price)
    schedule = config.routing.fee_schedule(broker, intent.asset_class)
    if quantity is None or schedule is None:
        return Decimal(0)
    unit_price = price or Decimal(0)
    volume = config.routing.volume_30d.get(broker, Decimal(0))
    fee = commission(schedule, intent.asset_class, quantity, unit_price, volume)
    fee += config.routing.regulatory.estimate(
        intent.asset_class, intent.side, quantity, traded_value(intent.asset_class, quantity, unit_price)
    )
    return fee.quantize(Decimal("0.0001"))


def route(
    intent: OrderIntent,
    config: MbxConfig,
    *,
    attempt: int = 1,
    market: MarketView | None = None,
    failed: Sequence[BrokerName] = (),
    risk: RiskView | None = None,
    config_version: int = 0,
) -> RouteDecision | Rejection:
    """Decide where ``intent`` goes, or why it cannot go anywhere."""
    market = market or MarketView()
    risk = risk or RiskView()
    price = market.reference_price or intent.limit_price or intent.stop_price
    quantity, notional = order_size(intent, price)
    denial = deny(intent, notional, config, risk)
    if denial is not None:
        return Rejection(denial.reason_code, denial.reason, ())
    matching = rule_set(config.routing).matching(intent, quantity, notional)

    excluded: list[ExcludedBroker] = []
    eligible: list[BrokerName] = []
    throttled: list[ExcludedBroker] = []
    for broker in BrokerName:
        reason = (
            _rule_or_state_exclusion(intent, broker, config, matching, failed)
            or _health_exclusion(broker, market, config)
            or broker_exclusion(broker, notional, config, risk)
        )
        if reason is None:
            eligible.append(broker)
        elif reason.reason_code == "rate_limited":
            throttled.append(reason)
        else:
            excluded.append(reason)
    if eligible or not throttled:
        excluded += throttled
    else:
        # Only brokers near their rate limit are left: the order waits for their budget
        # rather than being refused.
        eligible = [t.broker for t in throttled]
    for spread in diversification_exclusions(eligible, config, risk, intent):
        eligible.remove(spread.broker)
        excluded.append(spread)
    if not eligible:
        code = "chain_exhausted" if failed else "no_eligible_broker"
        why = "every eligible broker failed this order" if failed else "no enabled broker can take this order"
        return Rejection(code, why, tuple(excluded))

    weight_rule = next((r for r in matching if r.weights is not None), None)
    w = weight_rule.weights if weight_rule and weight_rule.weights else config.routing.weights
    ranked = score(
        [
            CandidateInputs(
                broker=b,
                estimated_fee=estimate_fee(intent, b, config, price),
                expected_latency_ms=_latency(b, market, config),
                fill_score=market.fill_scores.get(b, config.routing.fill_score_prior),
                priority=config.brokers[b].priority,
            )
            for b in eligible
        ],
        Weights(w.cost, w.speed, w.fill),
    )
    chosen, rule, why = _choose(intent, matching, eligible, ranked)
    if weight_rule is not None:
        why += f"; weights from rule {weight_rule.name}"
    if price is None:
        why += "; fees estimated without a reference price"
    return RouteDecision(
        message_id=f"route-{intent.intent_id}-{attempt}",
        correlation_id=intent.intent_id,
        intent_id=intent.intent_id,
        strategy_id=intent.strategy_id,
        broker=chosen,
        attempt=attempt,
        intent=intent,
        rule=rule,
        reason=why,
        candidates=tuple(ranked),
        excluded=tuple(excluded),
        fallback_chain=tuple(c.broker for c in ranked if c.broker != chosen),
        failover_from=failed[-1] if failed else None,
        reference_price=market.reference_price,
        failed_brokers=tuple(failed),
        config_version=config_version,
    )


def route_batch(
    intents: Sequence[OrderIntent], config: MbxConfig, market: Mapping[str, MarketView] | None = None
) -> list[RouteDecision | Rejection]:
    """Route many intents at once; ``market`` maps a symbol to what is known of it."""
    views = market or {}
    return [route(i, config, market=views.get(i.symbol)) for i in intents]


def _latency(broker: BrokerName, market: MarketView, config: MbxConfig) -> float:
    measured = market.health.get(broker) if market.health is not None else None
    if measured is not None and measured.latency_ms is not None:
        return measured.latency_ms
    return config.routing.expected_latency_ms.get(broker, 100.0)


def _health_exclusion(broker: BrokerName, market: MarketView, config: MbxConfig) -> ExcludedBroker | None:
    if market.health is None:
        return None
    health = market.health.get(broker)
    if health is None or not health.up:
        reason = health.reason if health is not None else f"no heartbeat from {broker}'s executor"
        return ExcludedBroker(broker=broker, reason_code="down", reason=reason)
    if health.rate_limit_headroom < config.routing.min_rate_headroom:
        return ExcludedBroker(
            broker=broker,
            reason_code="rate_limited",
            reason=f"{broker} has {health.rate_limit_headroom:.0%} of its rate budget left",
        )
    return None


def _rule_or_state_exclusion(
    intent: OrderIntent,
    broker: BrokerName,
    config: MbxConfig,
    matching: list[RoutingRule],
    failed: Sequence[BrokerName],
) -> ExcludedBroker | None:
    if broker in failed:
        return ExcludedBroker(broker=broker, reason_code="failed", reason=f"{broker} already failed this order")
    reason = exclusion(intent, broker, config)
    if reason is not None:
        return reason
    for rule in matching:
        if broker in rule.exclude:
            return ExcludedBroker(
                broker=broker, reason_code="rule_exclude", reason=f"rule {rule.name} excludes {broker}"
            )
        if rule.require and broker not in rule.require:
            return ExcludedBroker(
                broker=broker, reason_code="rule_require", reason=f"rule {rule.name} requires {', '.join(rule.require)}"
            )
    return None


def _choose(
    intent: OrderIntent, matching: list[RoutingRule], eligible: list[BrokerName], ranked: list[CandidateScore]
) -> tuple[BrokerName, str, str]:
    if intent.broker is not None and intent.broker in eligible:
        return intent.broker, "preference", f"the strategy asked for {intent.broker}"
    note = f" (preferred {intent.broker} is not eligible)" if intent.broker is not None else ""
    for rule in matching:
        if rule.prefer:
            for broker in rule.prefer:
                if broker in eligible:
                    return broker, f"rule:{rule.name}", f"rule {rule.name} prefers {broker}{note}"
            break  # the first prefer rule decides; none of its brokers is eligible
    default, default_rule = smart_default(intent)
    if default in eligible:
        kind = default_rule.split(":")[1]
        return default, default_rule, f"{kind} orders go to {default} by default{note}"
    best = ranked[0]
    return (
        best.broker,
        "score",
        (f"{default} (the default) is not eligible; {best.broker} scores best ({best.total:.3f}){note}"),
    )
