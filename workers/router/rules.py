"""Which broker gets an intent, and why. Pure: no I/O.

0. **Risk** (``risk.py``): kill switches and intent-level limits may deny the intent outright.
1. **Eligibility**: a broker must be configured, enabled, and support the intent's asset class,
   order type, time in force, and fractional or dollar-amount size; brokers that already failed
   this intent, killed brokers and brokers over their allocation limits are out too. A broker
   near its rate limit, or whose queue would keep the order waiting longer than
   ``routing.max_queue_wait_s``, is left out only while another broker can take the order
   (otherwise the order waits for its budget). Every broker left out is listed with its reason.
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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from contracts import (
    BrokerName,
    ExcludedBroker,
    OrderIntent,
    OrderStatus,
    RouteDecision,
)
from workers.domain.config import MbxConfig, RoutingRule
from workers.domain.fees import FeeModel, RegulatoryFees, order_size
from workers.domain.quotes import PriceCheck
from workers.router.accounts import PositionPlan, cash_exclusion, cash_needed, no_account_can_pay, position_plan
from workers.router.backlog import UNMEASURED_S_PER_ORDER
from workers.router.plan import BROKERS, RANK, RoutingPlan, RuleOutcome, Shape, plan_for, smart_default
from workers.router.registry import BrokerHealth
from workers.router.risk import RiskView, broker_exclusion, diversification_exclusions, over_limits
from workers.router.scoring import rank_columns

ZERO = Decimal(0)
WAIT_FOR_IT = frozenset({"rate_limited", "queue_wait"})
"""Reasons a broker is left out only while another broker can take the order."""
FEE_STEP = Decimal("0.0001")
NO_FEE = Decimal("0.0000")

__all__ = ["MarketView", "Rejection", "estimate_fee", "route", "route_batch", "smart_default"]


@dataclass(frozen=True, slots=True)
class Rejection:
    """No broker can take the intent."""

    reason_code: str
    reason: str
    excluded: tuple[ExcludedBroker, ...]
    status: OrderStatus = OrderStatus.REJECTED
    """What the intent's report says: rejected, or cancelled (by its strategy while it was held)."""


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
    price_check: PriceCheck | None = None
    """The quote source's answer for this symbol; None when no source was asked (a caller that
    passes ``reference_price`` alone, as in-process routing and tests do)."""
    queued: Mapping[BrokerName, int] = field(default_factory=dict)
    """Orders routed to each broker and not yet sent (``backlog.py``); a broker not named has
    none queued."""
    drain: Mapping[BrokerName, float] = field(default_factory=dict)
    """Seconds one order has lately taken each broker's executors while a queue waited, where
    measured (``backlog.py``); the wait counts it where it is slower than the rate limit."""


def estimate_fee(intent: OrderIntent, broker: BrokerName, config: MbxConfig, price: Decimal | None) -> Decimal:
    """Commission plus regulatory fees in USD; value-based parts are 0 when no price is known."""
    quantity, _ = order_size(intent, price)
    model = plan_for(config).fee_models[broker, intent.asset_class]
    regulatory = config.routing.regulatory
    return _fee(
        model, regulatory if regulatory.apply_to(intent.asset_class, intent.side) else None, intent, quantity, price
    )


def _fee(
    model: FeeModel | None,
    regulatory: RegulatoryFees | None,
    intent: OrderIntent,
    quantity: Decimal | None,
    price: Decimal | None,
) -> Decimal:
    """The estimate given the broker's fee model (None: no schedule, nothing charged) and the
    regulatory fees (None when none can be due on the order)."""
    if quantity is None or model is None:
        return NO_FEE
    unit_price = price or ZERO
    fee = model.commission(quantity, unit_price)
    if regulatory is not None:
        fee += regulatory.estimate(intent.asset_class, intent.side, quantity, quantity * unit_price * model.multiplier)
    return fee.quantize(FEE_STEP) if fee else NO_FEE


_NO_MARKET = MarketView()
_NO_RISK = RiskView()


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
    market = market or _NO_MARKET
    risk = risk or _NO_RISK
    plan = plan_for(config)
    shape = plan.shape(intent)
    check = market.price_check
    if check is not None and check.price is None:
        # No fresh quote: price the order at its own limit price or not at all, never at a
        # made-up number. A quantity without a price has no notional to check the limits with.
        price = intent.limit_price
        if price is None and intent.notional is None:
            return Rejection("no_reference_price", f"{check.problem}; a market order needs a limit_price then", ())
    else:
        price = market.reference_price or intent.limit_price or intent.stop_price
    quantity, notional = order_size(intent, price)
    denial = shape.halted or (over_limits(intent, notional, config, risk) if plan.limited else None)
    positions = position_plan(intent, quantity, BROKERS, config, risk)
    denial = denial or positions.denial
    if denial is not None:
        return Rejection(denial.reason_code, denial.reason, ())
    # Cash is checked only where some account's figure is known (a snapshot carries it).
    needed = None
    if risk.snapshot is not None and risk.snapshot.buying_power:
        fresh = check.quote if check is not None and check.price is not None else None
        needed = cash_needed(intent, price, fresh.ask if fresh is not None else None)
    outcome = plan.outcome(shape, shape.matching(quantity, notional))
    waits = queue_waits(plan, market)
    eligible, excluded, queued_everywhere = _eligibility(
        plan,
        outcome,
        intent=intent,
        notional=notional,
        market=market,
        risk=risk,
        failed=failed,
        waits=waits,
        positions=positions,
        needed=needed,
    )
    if not eligible:
        poor = _unpaid(excluded, failed, needed, risk)
        if poor is not None:
            return poor
        code = "chain_exhausted" if failed else "no_eligible_broker"
        why = "every eligible broker failed this order" if failed else "no enabled broker can take this order"
        return Rejection(code, why, tuple(excluded))
    ranked = _ranked(
        plan,
        shape,
        outcome,
        intent=intent,
        eligible=eligible,
        quantity=quantity,
        price=price,
        market=market,
        waits=waits,
    )
    if queued_everywhere:
        # Every broker that can take it has a long queue: time is what the order lacks, so the
        # broker that would send it soonest decides (the best score among equals), whatever the
        # defaults. Soonest is its queue's wait and then the order's own share of the budget:
        # the queue alone would favour a slow broker whose queue is a little shorter (one
        # Robinhood order costs six Alpaca ones), and the last orders of a burst would end there.
        def sent_in(candidate: dict[str, Any]) -> float:
            return float(candidate["expected_wait_ms"]) / 1000 + order_seconds(plan, market, candidate["broker"])

        soonest = min(ranked, key=sent_in)  # ranked is best score first
        chosen, rule = soonest["broker"], "queue"
        why = (
            f"every broker that can take it has a queue past routing.max_queue_wait_s; "
            f"{chosen} would send it soonest (in about {sent_in(soonest):.1f}s)"
        )
    elif positions.closing:
        chosen, rule, why = _close_at(intent, positions, eligible)
    else:
        chosen, rule, why = _choose(intent, shape.default, outcome.prefer, eligible, ranked)
    if needed is not None:
        why += _cash_figures(ranked, risk)
    why += _pricing_notes(outcome, check, price)
    # One validation for the decision and its candidates (cheaper than one per candidate).
    return RouteDecision.model_validate(
        {
            "message_id": f"route-{intent.intent_id}-{attempt}",
            "correlation_id": intent.intent_id,
            "intent_id": intent.intent_id,
            "strategy_id": intent.strategy_id,
            "broker": chosen,
            "attempt": attempt,
            "intent": intent,
            "rule": rule,
            "reason": why,
            "candidates": ranked,
            "excluded": excluded,
            "fallback_chain": [c["broker"] for c in ranked if c["broker"] != chosen],
            "failover_from": failed[-1] if failed else None,
            "reference_price": market.reference_price,
            "quote": check.quote if check is not None else None,
            "failed_brokers": failed,
            "config_version": config_version,
            "closes_position": positions.closing.get(chosen),
        }
    )


def _eligibility(
    plan: RoutingPlan,
    outcome: RuleOutcome,
    *,
    intent: OrderIntent,
    notional: Decimal | None,
    market: MarketView,
    risk: RiskView,
    failed: Sequence[BrokerName],
    waits: Mapping[BrokerName, float],
    positions: PositionPlan,
    needed: Decimal | None,
) -> tuple[list[BrokerName], list[ExcludedBroker], bool]:
    """The brokers that may take the order, every other broker with its reason, and whether the
    eligible ones are all brokers with a long queue (kept because no other can take it)."""
    config = plan.config
    excluded: list[ExcludedBroker] = []
    eligible: list[BrokerName] = []
    throttled: list[ExcludedBroker] = []
    health = market.health
    min_headroom = config.routing.min_rate_headroom
    # Risk limits can only keep a broker out when one is killed or allocations apply.
    check_risk = plan.broker_kills or (
        notional is not None and risk.snapshot is not None and risk.snapshot.portfolio_value > 0
    )
    max_wait = plan.max_queue_wait_s
    for broker, static_reason in zip(BROKERS, outcome.out, strict=True):
        reason = _failed(broker) if broker in failed else static_reason or positions.out.get(broker)
        state = health.get(broker) if health is not None else None
        if reason is None and health is not None and (state is None or not state.up):
            reason = _down(broker, state)
        if reason is None and (check_risk or needed is not None):
            reason = _account_exclusion(
                broker, notional=notional, needed=needed, config=config, risk=risk, positions=positions
            )
        # The reasons to wait come last, the longer first: a broker taken back because every
        # other one must wait too has passed every other check, and one with a long queue says
        # so even when its budget is also nearly spent (as it is, with a queue).
        if reason is None and max_wait is not None and waits.get(broker, 0.0) > max_wait:
            reason = _queue_exclusion(broker, market.queued[broker], waits[broker], max_wait)
        if reason is None and state is not None and state.rate_limit_headroom < min_headroom:
            reason = _rate_limited(broker, state)
        if reason is None:
            eligible.append(broker)
        elif reason.reason_code in WAIT_FOR_IT:
            throttled.append(reason)
        else:
            excluded.append(reason)
    queued_everywhere = False
    if eligible or not throttled:
        excluded += throttled
    else:
        # Only brokers near their rate limit or with a long queue are left: the order waits
        # for their budget rather than being refused.
        eligible = [t.broker for t in throttled]
        queued_everywhere = any(t.reason_code == "queue_wait" for t in throttled)
    if plan.diversify:
        for spread in diversification_exclusions(eligible, config, risk, intent):
            eligible.remove(spread.broker)
            excluded.append(spread)
    return eligible, excluded, queued_everywhere


def _ranked(
    plan: RoutingPlan,
    shape: Shape,
    outcome: RuleOutcome,
    *,
    intent: OrderIntent,
    eligible: list[BrokerName],
    quantity: Decimal | None,
    price: Decimal | None,
    market: MarketView,
    waits: Mapping[BrokerName, float],
) -> list[dict[str, Any]]:
    """Every eligible broker's fee, latency, fill score and priority, scored, best first."""
    routing = plan.config.routing
    regulatory = routing.regulatory if shape.regulated else None
    prior, fill_scores, health = routing.fill_score_prior, market.fill_scores, market.health
    fees, latencies, waits_ms, fills, priorities = [], [], [], [], []
    for broker in eligible:
        k = RANK[broker]
        model = shape.fees[k]
        fees.append(NO_FEE if model is None else _fee(model, regulatory, intent, quantity, price))
        measured = health.get(broker) if health is not None else None
        latencies.append(
            measured.latency_ms if measured is not None and measured.latency_ms is not None else plan.latency[k]
        )
        # The orders queued ahead spend the budget first: waiting for it is latency too.
        waits_ms.append(waits.get(broker, 0.0) * 1000)
        fills.append(fill_scores.get(broker, prior))
        priorities.append(plan.priority[k])
    return rank_columns(eligible, fees, latencies, fills, priorities, outcome.weights, waits_ms)


def route_batch(
    intents: Sequence[OrderIntent], config: MbxConfig, market: Mapping[str, MarketView] | None = None
) -> list[RouteDecision | Rejection]:
    """Route many intents at once; ``market`` maps a symbol to what is known of it."""
    views = market or {}
    return [route(i, config, market=views.get(i.symbol)) for i in intents]


def _account_exclusion(
    broker: BrokerName,
    *,
    notional: Decimal | None,
    needed: Decimal | None,
    config: MbxConfig,
    risk: RiskView,
    positions: PositionPlan,
) -> ExcludedBroker | None:
    """Risk limits, then cash; an order that closes a position at ``broker`` is kept out by
    neither (it shrinks the exposure, and pays for itself)."""
    closes = broker in positions.closing
    return broker_exclusion(broker, notional, config, risk, closes=closes) or (
        cash_exclusion(broker, needed, risk) if needed is not None and not closes else None
    )


def _failed(broker: BrokerName) -> ExcludedBroker:
    return ExcludedBroker(broker=broker, reason_code="failed", reason=f"{broker} already failed this order")


def _down(broker: BrokerName, state: BrokerHealth | None) -> ExcludedBroker:
    reason = state.reason if state is not None else f"no heartbeat from {broker}'s executor"
    return ExcludedBroker(broker=broker, reason_code="down", reason=reason)


def _rate_limited(broker: BrokerName, state: BrokerHealth) -> ExcludedBroker:
    return ExcludedBroker(
        broker=broker,
        reason_code="rate_limited",
        reason=f"{broker} has {state.rate_limit_headroom:.0%} of its rate budget left",
    )


def order_seconds(plan: RoutingPlan, market: MarketView, broker: BrokerName) -> float:
    """What one order costs ``broker``: its share of the rate limit, or the measured time the
    executors take per order where that is longer (``UNMEASURED_S_PER_ORDER`` until measured)."""
    return max(plan.seconds_per_order[RANK[broker]], market.drain.get(broker, UNMEASURED_S_PER_ORDER))


def queue_waits(plan: RoutingPlan, market: MarketView) -> dict[BrokerName, float]:
    """Seconds a new order would wait at each broker with a queue: the orders queued ahead,
    each costing ``order_seconds``."""
    return {broker: queued * order_seconds(plan, market, broker) for broker, queued in market.queued.items()}


def _queue_exclusion(broker: BrokerName, queued: int, wait: float, max_wait: float) -> ExcludedBroker:
    return ExcludedBroker(
        broker=broker,
        reason_code="queue_wait",
        reason=f"{broker} has {queued} orders queued, about {wait:.1f}s to wait "
        f"(routing.max_queue_wait_s is {max_wait:g}s)",
    )


def _pricing_notes(outcome: RuleOutcome, check: PriceCheck | None, price: Decimal | None) -> str:
    """What the reason adds about the weights and the price the decision used."""
    notes = f"; weights from rule {outcome.weight_rule}" if outcome.weight_rule is not None else ""
    if check is not None and check.price is None:
        basis = "priced at its limit price" if price is not None else "fees estimated without a price"
        notes += f"; {check.problem}, {basis}"
    elif price is None:
        notes += "; fees estimated without a reference price"
    return notes


def _unpaid(
    excluded: list[ExcludedBroker], failed: Sequence[BrokerName], needed: Decimal | None, risk: RiskView
) -> Rejection | None:
    """The rejection of a first attempt that no account can pay for (a broker short of cash
    among those left out, none eligible), with every broker's figure; None otherwise."""
    if failed or needed is None or not any(e.reason_code == "insufficient_buying_power" for e in excluded):
        return None
    poor = no_account_can_pay(needed, BROKERS, risk)
    return Rejection(poor.reason_code, poor.reason, tuple(excluded))


def _cash_figures(ranked: list[dict[str, Any]], risk: RiskView) -> str:
    """Put each candidate's buying power in its record; the reason's note on those not checked."""
    unknown = []
    for candidate in ranked:
        power = candidate["buying_power"] = risk.buying_power(candidate["broker"])
        if power is None:
            unknown.append(candidate["broker"])
    return f"; no account figure yet for {', '.join(unknown)}: not checked for cash" if unknown else ""


def _close_at(intent: OrderIntent, positions: PositionPlan, eligible: list[BrokerName]) -> tuple[BrokerName, str, str]:
    """The broker an order that closes a position goes to: the strategy's own choice among the
    holders, else the eligible holder with the most (only holders that cover it are eligible)."""
    if intent.broker is not None and intent.broker in eligible:
        return intent.broker, "preference", f"the strategy asked for {intent.broker}, which holds the position"
    holder = positions.holder(eligible)
    assert holder is not None  # eligible holds only brokers the order closes a position at
    held = positions.closing[holder]
    size = abs(held) if intent.quantity is None else intent.quantity
    return holder, "position", f"closes {size} of the {intent.symbol} position {holder} holds ({held})"


def _choose(
    intent: OrderIntent,
    default: tuple[BrokerName, str],
    prefer: RoutingRule | None,
    eligible: list[BrokerName],
    ranked: list[dict[str, Any]],
) -> tuple[BrokerName, str, str]:
    if intent.broker is not None and intent.broker in eligible:
        return intent.broker, "preference", f"the strategy asked for {intent.broker}"
    note = f" (preferred {intent.broker} is not eligible)" if intent.broker is not None else ""
    if prefer is not None:
        # The first prefer rule decides; when none of its brokers is eligible, the defaults do.
        for broker in prefer.prefer:
            if broker in eligible:
                return broker, f"rule:{prefer.name}", f"rule {prefer.name} prefers {broker}{note}"
    broker, default_rule = default
    if broker in eligible:
        kind = default_rule.split(":")[1]
        return broker, default_rule, f"{kind} orders go to {broker} by default{note}"
    best, total = ranked[0]["broker"], ranked[0]["total"]
    return best, "score", f"{broker} (the default) is not eligible; {best} scores best ({total:.3f}){note}"
