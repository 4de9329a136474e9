"""A routing config compiled for speed. Pure; the rules themselves are in ``rules.py``.

Most of a decision depends only on the config and the order's shape (symbol, strategy, asset
class, side, order type, time in force, and whether it is fractional or a dollar amount): which
brokers can trade it, which kill switch halts it, which rules could match it, the smart default,
each broker's fee model with its volume tier resolved. A ``RoutingPlan`` works that out once per
config and once per shape (a bounded cache), and once per combination of matching rules, so a
decision pays only for what depends on the order's size, the brokers' health and exposure.
A new config object gets a new plan: nothing is carried over from the old one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from contracts import AssetClass, BrokerName, ExcludedBroker, OrderIntent, OrderType, Side, TimeInForce
from workers.domain.capabilities import CAPABILITIES
from workers.domain.config import MbxConfig, RoutingRule, seconds_per_order
from workers.domain.fees import FeeModel, RegulatoryFees
from workers.domain.rule_match import RangeCheck, range_check, static_check
from workers.router.registry import BROKERS
from workers.router.risk import Denial, halted
from workers.router.scoring import RANK, Weights

__all__ = ["BROKERS", "RANK", "RoutingPlan", "RuleOutcome", "Shape", "plan_for", "smart_default"]

ShapeKey = tuple[str, str, AssetClass, Side, OrderType, TimeInForce, bool, bool]


def smart_default(intent: OrderIntent) -> tuple[BrokerName, str]:
    """The default broker for an intent and the name of the rule that picks it."""
    if intent.asset_class is AssetClass.CRYPTO:
        return BrokerName.COINBASE, "default:crypto"
    if intent.asset_class is AssetClass.OPTION:
        return BrokerName.SCHWAB, "default:option"
    if intent.is_fractional:
        return BrokerName.ROBINHOOD, "default:fractional"
    return BrokerName.ALPACA, "default:equity"


def capability_exclusion(intent: OrderIntent, broker: BrokerName, config: MbxConfig) -> ExcludedBroker | None:
    """Why ``broker`` cannot take ``intent`` whatever its state, or None when it can."""
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
    if broker_config.assets is not None and intent.asset_class not in broker_config.assets:
        taken = ", ".join(str(a) for a in broker_config.assets) or "nothing"
        return ExcludedBroker(
            broker=broker,
            reason_code="unsupported_asset",
            reason=f"{broker} takes only {taken} here (brokers.{broker}.assets, adapter {broker_config.adapter})",
        )
    asset = intent.asset_class
    unsupported = (
        (intent.order_type not in support.order_types, "order_type", f"has no {intent.order_type} orders for {asset}"),
        (
            intent.time_in_force not in support.time_in_force,
            "time_in_force",
            f"has no {intent.time_in_force} orders for {asset}",
        ),
        (
            intent.notional is not None and not support.notional,
            "notional",
            f"does not take dollar-amount {asset} orders",
        ),
        (intent.is_fractional and not support.fractional, "fractional", f"does not take fractional {asset} quantities"),
    )
    for applies, what, why in unsupported:  # built once per order shape: the plan caches it
        if applies:
            return ExcludedBroker(broker=broker, reason_code=f"unsupported_{what}", reason=f"{broker} {why}")
    return None


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """What a set of matching rules means for one order shape."""

    rules: tuple[RoutingRule, ...]
    out: tuple[ExcludedBroker | None, ...]
    """Per broker (in ``BROKERS`` order): why its capabilities or a rule keep it out, or None."""
    weights: Weights
    weight_rule: str | None
    prefer: RoutingRule | None
    """The first matching rule that prefers brokers; it alone decides among them."""


@dataclass(slots=True)
class Shape:
    """Everything about one order shape that the config decides."""

    halted: Denial | None
    capability: tuple[ExcludedBroker | None, ...]
    candidate_rules: tuple[tuple[RoutingRule, RangeCheck | None], ...]
    fees: tuple[FeeModel | None, ...]
    """Per broker: its fee model, or None when nothing can be charged on this shape."""
    default: tuple[BrokerName, str]
    regulated: bool
    """Whether regulatory fees can be due on this shape."""
    outcomes: dict[tuple[int, ...], RuleOutcome] = field(default_factory=dict)
    sized: bool = False
    """True when some candidate rule has a size range, so matching depends on each order."""

    def matching(self, quantity: Decimal | None, notional: Decimal | None) -> tuple[int, ...]:
        """Indices (into ``candidate_rules``) of the rules that match an order of this size."""
        if not self.sized:
            return tuple(range(len(self.candidate_rules)))
        return tuple(
            k for k, (_, ranges) in enumerate(self.candidate_rules) if ranges is None or ranges(quantity, notional)
        )


class RoutingPlan:
    """One config, compiled. Get it with ``plan_for(config)``."""

    SHAPE_LIMIT = 50_000

    def __init__(self, config: MbxConfig) -> None:
        routing = config.routing
        self.config = config
        self.rules = [(rule, static_check(rule.match), range_check(rule.match)) for rule in routing.rules]
        self.weights = Weights(routing.weights.cost, routing.weights.speed, routing.weights.fill)
        self.priority = tuple(config.brokers[b].priority if b in config.brokers else 0 for b in BROKERS)
        self.latency = tuple(routing.expected_latency_ms.get(b, 100.0) for b in BROKERS)
        self.seconds_per_order = tuple(seconds_per_order(b, config) for b in BROKERS)
        """The rate budget one order spends at each broker: its queue times this is its wait."""
        self.max_queue_wait_s = routing.max_queue_wait_s
        self.fee_models: dict[tuple[BrokerName, AssetClass], FeeModel | None] = {}
        for broker in BROKERS:
            for asset in AssetClass:
                schedule = routing.fee_schedule(broker, asset)
                volume = routing.volume_30d.get(broker, Decimal(0))
                self.fee_models[broker, asset] = FeeModel.of(schedule, asset, volume) if schedule else None
        risk = config.risk
        self.limited = risk.max_order_notional is not None or risk.reduce_only or risk.max_symbol_exposure is not None
        """Whether any intent-level limit is set (``risk.over_limits`` has something to check)."""
        self.broker_kills = bool(risk.kill_switches.brokers)
        self.diversify = risk.min_broker_diversification > 1
        self._shapes: dict[ShapeKey, Shape] = {}

    def capacity(self, shape: Shape) -> float:
        """Orders a second that the brokers able to take ``shape`` can place together, within
        their rate budgets: how scarce a home orders of this shape have."""
        return sum(
            1 / seconds if seconds > 0 else math.inf
            for seconds, out in zip(self.seconds_per_order, shape.capability, strict=True)
            if out is None
        )

    def shape(self, intent: OrderIntent) -> Shape:
        fractional = intent.is_fractional
        key = (
            intent.symbol,
            intent.strategy_id,
            intent.asset_class,
            intent.side,
            intent.order_type,
            intent.time_in_force,
            intent.notional is not None,
            fractional,
        )
        found = self._shapes.get(key)
        if found is None:
            if len(self._shapes) >= self.SHAPE_LIMIT:
                self._shapes.clear()
            found = self._shapes[key] = self._compile(intent)
        return found

    def _compile(self, intent: OrderIntent) -> Shape:
        candidates = tuple((rule, ranges) for rule, static, ranges in self.rules if static(intent))
        regulated = RegulatoryFees.apply_to(intent.asset_class, intent.side)
        return Shape(
            halted=halted(intent, self.config),
            capability=tuple(capability_exclusion(intent, b, self.config) for b in BROKERS),
            candidate_rules=candidates,
            fees=tuple(self._charges(b, intent.asset_class, regulated) for b in BROKERS),
            default=smart_default(intent),
            regulated=regulated,
            sized=any(ranges is not None for _, ranges in candidates),
        )

    def _charges(self, broker: BrokerName, asset: AssetClass, regulated: bool) -> FeeModel | None:
        model = self.fee_models[broker, asset]
        if model is None or (model.free and not regulated):
            return None
        return model

    def outcome(self, shape: Shape, matched: tuple[int, ...]) -> RuleOutcome:
        found = shape.outcomes.get(matched)
        if found is None:
            rules = tuple(shape.candidate_rules[k][0] for k in matched)
            found = shape.outcomes[matched] = self._outcome(shape, rules)
        return found

    def _outcome(self, shape: Shape, rules: Sequence[RoutingRule]) -> RuleOutcome:
        out = tuple(
            capability or _rule_exclusion(b, rules) for b, capability in zip(BROKERS, shape.capability, strict=True)
        )
        weight_rule = next((r for r in rules if r.weights is not None), None)
        weights = self.weights
        if weight_rule is not None and weight_rule.weights is not None:
            w = weight_rule.weights
            weights = Weights(w.cost, w.speed, w.fill)
        return RuleOutcome(
            rules=tuple(rules),
            out=out,
            weights=weights,
            weight_rule=weight_rule.name if weight_rule else None,
            prefer=next((r for r in rules if r.prefer), None),
        )


def _rule_exclusion(broker: BrokerName, rules: Sequence[RoutingRule]) -> ExcludedBroker | None:
    for rule in rules:
        if broker in rule.exclude:
            return ExcludedBroker(
                broker=broker, reason_code="rule_exclude", reason=f"rule {rule.name} excludes {broker}"
            )
        if rule.require and broker not in rule.require:
            return ExcludedBroker(
                broker=broker, reason_code="rule_require", reason=f"rule {rule.name} requires {', '.join(rule.require)}"
            )
    return None


_PLANS: dict[int, RoutingPlan] = {}


def plan_for(config: MbxConfig) -> RoutingPlan:
    """The compiled form of ``config``, built once per config object (configs are immutable)."""
    plan = _PLANS.get(id(config))
    if plan is not None and plan.config is config:
        return plan
    if len(_PLANS) > 16:  # configs change rarely; keep only a few recent ones
        _PLANS.clear()
    plan = _PLANS[id(config)] = RoutingPlan(config)
    return plan
