"""What-if on real history: recorded first-attempt decisions routed again with another config.

Pure: a recorded decision (rebuilt from its audit rows by ``recorded_decision``) in, the new
decision or rejection out, through the router's own ``route()``; nothing here repeats a routing
rule. What the decision did not record is an
assumption, listed in ``ASSUMPTIONS`` and printed with every replay.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from contracts import BrokerName, RouteDecision
from workers.domain.approvals import approval_rule
from workers.domain.config import MbxConfig
from workers.domain.quotes import PriceCheck
from workers.router.plan import BROKERS
from workers.router.registry import BrokerHealth
from workers.router.rules import MarketView, Rejection, route

ASSUMPTIONS = (
    "broker state taken as recorded exclusions: a broker excluded as down stays down, one excluded as "
    "rate_limited has no rate headroom, one excluded for its queue keeps that queue; every other broker is up",
    "quote, reference price and measured fill scores taken as recorded in each decision; a broker that was not "
    "a candidate gets the new config's fill_score_prior",
    "latency of a recorded candidate taken as recorded (measured or configured then); other brokers use the new "
    "config's latency",
    "exposure, cash and positions were not recorded: allocation limits, buying power and position closing are "
    "not checked (intent-level limits and kill switches of the new config are)",
    "the intent is rebuilt from its order row (symbol, asset class, side, order type, size) and the decision: "
    "a strategy's broker preference from the rule or reason; time in force, limit and stop prices and metadata "
    "were not recorded (defaults; a limit or stop order is priced at the recorded reference price)",
    "only first attempts are replayed; intents rejected when recorded have no decision and are not replayed "
    "(nor those denied, expired or still waiting for approval)",
    "approval rules are checked at the recorded quote, as the router checks them before routing; an intent they "
    "hold is shown with the decision it would get once approved; a child of a parent order is checked on its own "
    "(the router checks the parent whole). Held when recorded: the first rule in the approvals audit",
)
_PRICES = {"limit": ("limit_price",), "stop": ("stop_price",), "stop_limit": ("limit_price", "stop_price")}
_PREFERRED = re.compile(r"preferred (\w+) is not eligible")
_QUEUE = re.compile(r"has (\d+) orders queued, about ([0-9.]+)s to wait")


@dataclass(frozen=True, slots=True)
class Replayed:
    """One intent's recorded decision beside its replay."""

    intent_id: str
    strategy_id: str
    symbol: str
    old_broker: BrokerName
    old_rule: str
    old_fee: Decimal | None
    old_latency_ms: float | None
    new_broker: BrokerName | None
    new_rule: str
    new_fee: Decimal | None
    new_latency_ms: float | None
    new_reason: str
    old_hold: str | None = None
    """The approval rule that held the intent when it was recorded (None: routed at once)."""
    new_hold: str | None = None
    """The approval rule of the replayed config that would hold the intent for an operator's
    approval before routing it (None: routed at once)."""

    @property
    def changed(self) -> bool:
        """The broker or the rule that decides changes (a hold is counted apart: ``held``)."""
        return (self.old_broker, self.old_rule) != (self.new_broker, self.new_rule)

    @property
    def rejected(self) -> bool:
        return self.new_broker is None


@dataclass(frozen=True, slots=True)
class RuleEffect:
    """How many decisions a rule made before and after, and how many it gained or lost."""

    rule: str
    before: int
    after: int


@dataclass(frozen=True, slots=True)
class WhatIf:
    rows: tuple[Replayed, ...]
    assumptions: tuple[str, ...] = ASSUMPTIONS
    mix_before: Counter[str] = field(default_factory=Counter)
    mix_after: Counter[str] = field(default_factory=Counter)

    @property
    def changed(self) -> list[Replayed]:
        return [r for r in self.rows if r.changed]

    @property
    def rejected(self) -> list[Replayed]:
        return [r for r in self.rows if r.rejected]

    @property
    def held(self) -> list[Replayed]:
        """Intents the replayed config would hold for approval."""
        return [r for r in self.rows if r.new_hold is not None]

    @property
    def held_before(self) -> list[Replayed]:
        """Intents an approval rule held when they were recorded."""
        return [r for r in self.rows if r.old_hold is not None]

    def hold_effect(self) -> list[RuleEffect]:
        """Intents each approval rule held when recorded and would hold now."""
        before = Counter(r.old_hold for r in self.rows if r.old_hold is not None)
        after = Counter(r.new_hold for r in self.rows if r.new_hold is not None)
        return [RuleEffect(rule, before[rule], after[rule]) for rule in sorted(before.keys() | after.keys())]

    def fees(self) -> tuple[Decimal, Decimal]:
        """Estimated fees before and after, over the intents routed in both."""
        both = [r for r in self.rows if not r.rejected]
        return (
            sum((r.old_fee or Decimal(0) for r in both), Decimal(0)),
            sum((r.new_fee or Decimal(0) for r in both), Decimal(0)),
        )

    def latency(self) -> tuple[float | None, float | None]:
        """Mean expected latency (ms) before and after, over the intents routed in both."""
        pairs = [(r.old_latency_ms, r.new_latency_ms) for r in self.rows if not r.rejected]
        old = [a for a, _ in pairs if a is not None]
        new = [b for _, b in pairs if b is not None]
        return (sum(old) / len(old) if old else None, sum(new) / len(new) if new else None)

    def rule_effect(self) -> list[RuleEffect]:
        before = Counter(r.old_rule for r in self.rows)
        after = Counter(r.new_rule for r in self.rows)
        return [
            RuleEffect(rule, before[rule], after[rule])
            for rule in sorted(before.keys() | after.keys())
            if before[rule] != after[rule]
        ]


def recorded_decision(row: Mapping[str, Any]) -> RouteDecision:
    """A first attempt's route row joined with its order row, as the ``RouteDecision`` it was."""
    stored = row["decision"]
    broker, rule, reason = row["broker_name"], row["rule"], stored.get("reason", "")
    preferred = broker if rule == "preference" else (found[1] if (found := _PREFERRED.search(reason)) else None)
    size = {"notional": row["notional"]} if row["notional"] is not None else {"quantity": row["quantity"]}
    # The limit and stop prices were not recorded; the reference price stands in for them (a
    # nominal 1 when there was none: the intent must carry one to be valid, and no fresh quote
    # means the replay prices the order at it, as the router did at its limit).
    price = stored.get("reference_price") or "1"
    priced = {name: price for name in _PRICES.get(row["order_type"], ())}
    intent = {
        "message_id": row["intent_id"],
        "correlation_id": row["intent_id"],
        "created_at": row["decided_at"],
        "intent_id": row["intent_id"],
        "strategy_id": row["strategy_id"],
        "symbol": row["symbol"],
        "asset_class": row["asset_class"],
        "side": row["side"],
        "order_type": row["order_type"],
        "broker": preferred,
        **size,
        **priced,
    }
    return RouteDecision.model_validate(
        {
            "message_id": stored.get("message_id") or f"route-{row['intent_id']}-1",
            "correlation_id": row["intent_id"],
            "created_at": row["decided_at"],
            "intent_id": row["intent_id"],
            "strategy_id": row["strategy_id"],
            "broker": broker,
            "intent": intent,
            "rule": rule,
            "reason": reason,
            "candidates": stored.get("candidates", ()),
            "excluded": stored.get("excluded", ()),
            "reference_price": stored.get("reference_price"),
            "quote": stored.get("quote"),
            "config_version": stored.get("config_version", 0),
        }
    )


def market_as_recorded(decision: RouteDecision) -> MarketView:
    """The market and broker state ``decision`` was made in, as far as it recorded them."""
    health = {broker: BrokerHealth(True, "state not recorded: taken as up") for broker in BROKERS}
    fill_scores: dict[BrokerName, float] = {}
    queued: dict[BrokerName, int] = {}
    drain: dict[BrokerName, float] = {}
    for candidate in decision.candidates:
        latency = max(candidate.expected_latency_ms - candidate.expected_wait_ms, 0.0)
        health[candidate.broker] = BrokerHealth(True, "a candidate when recorded", latency_ms=latency)
        fill_scores[candidate.broker] = candidate.fill_score
        if candidate.expected_wait_ms > 0:
            # One order queued that drains in the recorded wait gives the recorded wait back.
            queued[candidate.broker], drain[candidate.broker] = 1, candidate.expected_wait_ms / 1000
    for excluded in decision.excluded:
        if excluded.reason_code == "down":
            health[excluded.broker] = BrokerHealth(False, excluded.reason)
        elif excluded.reason_code == "rate_limited":
            health[excluded.broker] = BrokerHealth(True, excluded.reason, rate_limit_headroom=0.0)
        elif excluded.reason_code == "queue_wait" and (found := _QUEUE.search(excluded.reason)):
            count, wait = int(found[1]), float(found[2])
            queued[excluded.broker], drain[excluded.broker] = count, wait / max(count, 1)
    quote, price = decision.quote, decision.reference_price
    if quote is not None or price is None:
        problem = "" if price is not None else "no usable quote was recorded"
        check: PriceCheck | None = PriceCheck(price, quote, problem)
    else:
        check = None  # decided in-process with a reference price and no quote source
    return MarketView(
        reference_price=price, health=health, fill_scores=fill_scores, price_check=check, queued=queued, drain=drain
    )


def replay_one(decision: RouteDecision, config: MbxConfig, held_before: str | None = None) -> Replayed:
    """``decision``'s intent routed again under ``config`` in the recorded market, and the
    approval rule that would hold it first; ``held_before`` names the rule that held it then."""
    market = market_as_recorded(decision)
    outcome = route(decision.intent, config, attempt=decision.attempt, market=market, failed=decision.failed_brokers)
    # The router asks the approval rules before routing, at the quote's price (none when unusable).
    price = market.price_check.price if market.price_check is not None else market.reference_price
    hold = approval_rule(decision.intent, config, price)
    old = _chosen(decision)
    if isinstance(outcome, Rejection):
        new_broker, new_rule, new_fee, new_latency, why = (
            None,
            f"rejected:{outcome.reason_code}",
            None,
            None,
            outcome.reason,
        )
    else:
        chosen = _chosen(outcome)
        new_broker, new_rule, why = outcome.broker, outcome.rule, outcome.reason
        new_fee, new_latency = chosen
    return Replayed(
        intent_id=decision.intent_id,
        strategy_id=decision.strategy_id,
        symbol=decision.intent.symbol,
        old_broker=decision.broker,
        old_rule=decision.rule,
        old_fee=old[0],
        old_latency_ms=old[1],
        new_broker=new_broker,
        new_rule=new_rule,
        new_fee=new_fee,
        new_latency_ms=new_latency,
        new_reason=why,
        old_hold=held_before,
        new_hold=hold.name if hold is not None else None,
    )


def replay(
    decisions: Iterable[RouteDecision], config: MbxConfig, held_before: Mapping[str, str] | None = None
) -> WhatIf:
    """Every decision replayed under ``config``, with the broker mix before and after;
    ``held_before`` maps an intent id to the approval rule that held it when recorded."""
    held = held_before or {}
    rows = tuple(replay_one(d, config, held.get(d.intent_id)) for d in decisions)
    before = Counter(str(r.old_broker) for r in rows)
    after = Counter(str(r.new_broker) if r.new_broker is not None else "rejected" for r in rows)
    return WhatIf(rows, mix_before=before, mix_after=after)


def _chosen(decision: RouteDecision) -> tuple[Decimal | None, float | None]:
    """The chosen broker's estimated fee and expected latency (None when it was no candidate)."""
    for candidate in decision.candidates:
        if candidate.broker == decision.broker:
            return candidate.estimated_fee, candidate.expected_latency_ms
    return None, None
