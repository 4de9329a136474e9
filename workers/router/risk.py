"""Pre-trade risk checks across brokers. Pure.

Intent-level checks deny the intent outright (a published rejection with a reason code): kill
switches (global, strategy, symbol), ``max_order_notional``, ``reduce_only`` and
``max_symbol_exposure``. Broker-level checks remove a broker from the candidates, so the order
goes to the next one: a killed broker, ``max_broker_allocation`` (share of total portfolio value
on one broker) and the broker's ``allocation_percent``.

Exposure comes from the aggregator's snapshot (including orders in flight when it was taken)
plus what this router routed since, so orders routed in quick succession count against the same
limits. Allocation limits need a portfolio value: they apply once a snapshot exists.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from contracts import BrokerName, ExcludedBroker, ExposureSnapshot, OrderIntent, Side
from workers.domain.config import MbxConfig

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Denial:
    reason_code: str
    reason: str


@dataclass(frozen=True, slots=True)
class RiskView:
    """Exposure the checks see: the latest snapshot plus in-flight orders routed since."""

    snapshot: ExposureSnapshot | None = None
    pending_by_broker: Mapping[BrokerName, Decimal] = field(default_factory=dict)
    pending_by_symbol: Mapping[str, Decimal] = field(default_factory=dict)
    pending_spend: Mapping[BrokerName, Decimal] = field(default_factory=dict)
    """Cash the orders routed to each broker since the snapshot will spend (``cash_needed``)."""
    pending_quantity: Mapping[tuple[BrokerName, str, Side], Decimal] = field(default_factory=dict)
    """Quantity routed since the snapshot per broker, symbol and side."""

    def knows_holdings(self) -> bool:
        """Whether the snapshot says where positions are held (a snapshot with net positions and
        no holdings per broker comes from an aggregator that does not publish them)."""
        return self.snapshot is not None and (bool(self.snapshot.holdings) or not self.snapshot.positions)

    def held(self, broker: BrokerName, symbol: str) -> Decimal:
        """The position ``broker`` holds in ``symbol`` (long > 0) counting the orders routed there
        since the snapshot: its buys add, its sells take away (a sell right after a buy's fill
        closes what the buy bought, though no snapshot shows it yet). A position the snapshot
        shows keeps its side: sells in flight close a long at most to 0, buys a short."""
        if self.snapshot is None:
            return ZERO
        held = self.snapshot.holdings.get(broker, {}).get(symbol, ZERO)
        pending = self.pending_quantity
        net = held + pending.get((broker, symbol, Side.BUY), ZERO) - pending.get((broker, symbol, Side.SELL), ZERO)
        if held > 0:
            return max(net, ZERO)
        if held < 0:
            return min(net, ZERO)
        return net

    def buying_power(self, broker: BrokerName) -> Decimal | None:
        """The cash ``broker`` can still spend: its account's figure in the snapshot less what was
        routed there since; None while no account figure is known."""
        power = self.snapshot.buying_power.get(broker) if self.snapshot is not None else None
        return None if power is None else power - self.pending_spend.get(broker, ZERO)

    def broker_exposure(self, broker: BrokerName) -> Decimal:
        held = self.snapshot.by_broker.get(broker, ZERO) if self.snapshot else ZERO
        return abs(held) + self.pending_by_broker.get(broker, ZERO)

    def symbol_exposure(self, symbol: str) -> Decimal:
        held = self.snapshot.by_symbol.get(symbol, ZERO) if self.snapshot else ZERO
        return held + self.pending_by_symbol.get(symbol, ZERO)

    def position(self, symbol: str) -> Decimal:
        return self.snapshot.positions.get(symbol, ZERO) if self.snapshot else ZERO


def signed(intent: OrderIntent, amount: Decimal) -> Decimal:
    return amount if intent.side is Side.BUY else -amount


def halted(intent: OrderIntent, config: MbxConfig) -> Denial | None:
    """The kill switch that stops the intent (global, its strategy or its symbol), or None."""
    kills = config.risk.kill_switches
    if kills.all:
        return Denial("kill_switch", "trading is halted by the global kill switch")
    if any(fnmatch.fnmatchcase(intent.strategy_id, p) for p in kills.strategies):
        return Denial("kill_switch", f"strategy {intent.strategy_id} is halted by a kill switch")
    if any(fnmatch.fnmatchcase(intent.symbol, p) for p in kills.symbols):
        return Denial("kill_switch", f"symbol {intent.symbol} is halted by a kill switch")
    return None


def over_limits(intent: OrderIntent, notional: Decimal | None, config: MbxConfig, risk: RiskView) -> Denial | None:
    """The intent-level limit the order would break (order notional, reduce-only, symbol
    exposure), or None."""
    limits = config.risk
    if limits.max_order_notional is not None and notional is not None and notional > limits.max_order_notional:
        return Denial(
            "max_order_notional",
            f"order notional {notional:.2f} exceeds max_order_notional {limits.max_order_notional}",
        )
    if limits.reduce_only:
        held = risk.position(intent.symbol)
        quantity = intent.quantity
        reduces = (held > 0 and intent.side is Side.SELL) or (held < 0 and intent.side is Side.BUY)
        if not reduces or (quantity is not None and quantity > abs(held)):
            return Denial("reduce_only", f"reduce-only mode: the order does not shrink the {intent.symbol} position")
    if limits.max_symbol_exposure is not None and notional is not None:
        after = abs(risk.symbol_exposure(intent.symbol) + signed(intent, notional))
        if after > limits.max_symbol_exposure:
            return Denial(
                "max_symbol_exposure",
                f"{intent.symbol} exposure would reach {after:.2f} across brokers, "
                f"over max_symbol_exposure {limits.max_symbol_exposure}",
            )
    return None


def broker_exclusion(
    broker: BrokerName, notional: Decimal | None, config: MbxConfig, risk: RiskView, *, closes: bool = False
) -> ExcludedBroker | None:
    """Why risk limits keep ``broker`` out for this order, or None. An order that ``closes`` a
    position held at ``broker`` shrinks its exposure: allocation limits never keep it out."""
    if broker in config.risk.kill_switches.brokers:
        return ExcludedBroker(broker=broker, reason_code="kill_switch", reason=f"{broker} is halted by a kill switch")
    snapshot = risk.snapshot
    if snapshot is None or snapshot.portfolio_value <= 0 or notional is None or closes:
        return None
    after = risk.broker_exposure(broker) + notional
    cap = config.risk.max_broker_allocation * snapshot.portfolio_value
    if after > cap:
        return ExcludedBroker(
            broker=broker,
            reason_code="max_broker_allocation",
            reason=f"{broker} would hold {after:.2f}, over max_broker_allocation "
            f"{config.risk.max_broker_allocation} of portfolio value {snapshot.portfolio_value:.2f}",
        )
    share = config.brokers[broker].allocation_percent * snapshot.portfolio_value
    if after > share:
        return ExcludedBroker(
            broker=broker,
            reason_code="allocation_percent",
            reason=f"{broker} would hold {after:.2f}, over its allocation_percent "
            f"{config.brokers[broker].allocation_percent} of portfolio value",
        )
    return None


def diversification_exclusions(
    eligible: list[BrokerName], config: MbxConfig, risk: RiskView, intent: OrderIntent
) -> list[ExcludedBroker]:
    """While fewer than ``min_broker_diversification`` brokers hold exposure, new long exposure
    goes to a broker that holds none, if one is eligible. Sells are left alone: sending a sell
    away from the broker that holds the position would open a short elsewhere."""
    wanted = config.risk.min_broker_diversification
    if wanted <= 1 or risk.snapshot is None or intent.side is not Side.BUY:
        return []
    holding = {b for b in BrokerName if risk.broker_exposure(b) > 0}
    if len(holding) >= wanted or not [b for b in eligible if b not in holding]:
        return []
    return [
        ExcludedBroker(
            broker=b,
            reason_code="min_broker_diversification",
            reason=f"only {len(holding)} broker(s) hold positions and min_broker_diversification is "
            f"{wanted}: new exposure goes to another broker",
        )
        for b in eligible
        if b in holding
    ]
