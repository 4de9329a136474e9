"""Which broker gets an intent: eligibility, the strategy's preference, then smart defaults.

Pure: no I/O. Scoring by cost, speed and fill quality arrives with the scoring module; until
then the decision lists no candidate scores and says which rule decided.

Order of precedence:
1. the intent's ``broker`` preference, when that broker is eligible;
2. smart defaults: crypto -> coinbase, option -> schwab, fractional equity (quantity not whole,
   or a notional amount) -> robinhood, equity -> alpaca;
3. otherwise the eligible broker with the lowest configured priority number.
The fallback chain is every other eligible broker, by priority.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts import (
    AssetClass,
    BrokerName,
    ExcludedBroker,
    OrderIntent,
    RouteDecision,
)
from workers.settings import MbxConfig
from workers.venues.capabilities import CAPABILITIES


@dataclass(frozen=True, slots=True)
class Rejection:
    """No broker can take the intent."""

    reason_code: str
    reason: str
    excluded: tuple[ExcludedBroker, ...]


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


def route(intent: OrderIntent, config: MbxConfig, attempt: int = 1) -> RouteDecision | Rejection:
    """Decide where ``intent`` goes, or why it cannot go anywhere."""
    excluded: list[ExcludedBroker] = []
    eligible: list[BrokerName] = []
    for broker in BrokerName:
        reason = exclusion(intent, broker, config)
        if reason is None:
            eligible.append(broker)
        else:
            excluded.append(reason)
    if not eligible:
        return Rejection("no_eligible_broker", "no enabled broker can take this order", tuple(excluded))

    by_priority = sorted(eligible, key=lambda b: (config.brokers[b].priority, list(BrokerName).index(b)))
    default, default_rule = smart_default(intent)
    if intent.broker is not None and intent.broker in eligible:
        chosen, rule, why = intent.broker, "preference", f"the strategy asked for {intent.broker}"
    elif default in eligible:
        chosen, rule, why = default, default_rule, f"{default_rule.split(':')[1]} orders go to {default} by default"
    else:
        chosen, rule = by_priority[0], "priority"
        why = f"{default} (the default) is not eligible; {chosen} has the best priority"
    if intent.broker is not None and intent.broker != chosen:
        why += f" (preferred {intent.broker} is not eligible)"

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
        excluded=tuple(excluded),
        fallback_chain=tuple(b for b in by_priority if b != chosen),
    )
