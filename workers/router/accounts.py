"""What each broker account holds and can pay for, as routing sees it. Pure.

- **Positions.** A sell of a held long (or a buy that covers a held short) closes a position: it
  may go only to a broker holding enough of it to cover the order, the one holding the most
  first, and is refused at once when no holder has enough (each holder's quantity in the
  reason). A buy larger than a short held at one broker only goes there (it covers the short and
  goes long with the rest); a buy against shorts that buys in flight already cover opens a long.
  A sell of a symbol held nowhere would open a short: only where the intent asks for one
  (``position_effect: open``) at a margin account, or where the broker's config allows shorting
  (``allow_short``). ``position_effect: close`` refuses an order that closes nothing.
- **Buying power.** An order that opens or adds to a position needs the cash for it: a broker
  whose known buying power (the account's last figure, less what was routed there since) is
  short of it is excluded with ``insufficient_buying_power``. A broker whose account figure is
  not known yet is not checked. An order that closes a position there is never checked.

Positions and buying power come from the aggregator's exposure snapshot plus the orders this
router routed since (``RiskView``); without a snapshot nothing is known and nothing is steered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from contracts import BrokerName, ExcludedBroker, OrderIntent, OrderType, PositionEffect, Side
from workers.domain.config import MbxConfig
from workers.domain.fees import traded_value
from workers.router.risk import Denial, RiskView

ZERO = Decimal(0)

__all__ = ["PositionPlan", "cash_exclusion", "cash_needed", "no_account_can_pay", "position_plan"]


@dataclass(frozen=True, slots=True)
class PositionPlan:
    """What the positions held mean for one order."""

    closing: Mapping[BrokerName, Decimal] = field(default_factory=dict)
    """The brokers where the order closes a position it covers, with the quantity held there
    (signed, long > 0); empty when the order opens or adds to a position."""
    out: Mapping[BrokerName, ExcludedBroker] = field(default_factory=dict)
    """Brokers the positions keep out, with the reason."""
    denial: Denial | None = None
    """Set when no broker may take the order for what is held."""

    def holder(self, eligible: Sequence[BrokerName]) -> BrokerName | None:
        """The eligible broker holding the most of the position the order closes, or None."""
        holders = [b for b in eligible if b in self.closing]
        return max(holders, key=lambda b: abs(self.closing[b]), default=None)


_NOTHING = PositionPlan()


def position_plan(
    intent: OrderIntent,
    quantity: Decimal | None,
    brokers: Sequence[BrokerName],
    config: MbxConfig,
    risk: RiskView,
) -> PositionPlan:
    """Where ``intent`` may go for the positions held (``brokers``: every broker, in rank order)."""
    if not risk.knows_holdings():
        return _NOTHING  # positions unknown: nothing to steer by
    symbol, effect = intent.symbol, intent.position_effect
    # The brokers whose position the order reduces, with what orders in flight leave of it (0
    # when they close it all: still a holder, whose quantity the refusal names).
    assert risk.snapshot is not None
    sign = 1 if intent.side is Side.SELL else -1
    reduces = [
        (b, held)
        for b in brokers
        for held in [risk.held(b, symbol)]
        if risk.snapshot.holdings.get(b, {}).get(symbol, ZERO) * sign > 0 or held * sign > 0
    ]
    if intent.side is Side.BUY and not any(held for _, held in reduces):
        reduces = []  # every short is covered by buys in flight: this buy opens or adds to a long
    if reduces and effect is not PositionEffect.OPEN:
        covering = {b: held for b, held in reduces if held and (quantity is None or abs(held) >= quantity)}
        short = [(b, held) for b, held in reduces if held]
        if not covering and intent.side is Side.BUY and len(short) == 1:
            # A buy larger than the one short held covers it and goes long there with the rest: no
            # position opens at another broker, and a buy needs no permission to short.
            covering = dict(short)
        if not covering:
            return PositionPlan(denial=Denial("insufficient_position", _too_small(intent, quantity, reduces)))
        held_at = ", ".join(f"{b} ({held})" for b, held in covering.items())
        out = {
            b: ExcludedBroker(
                broker=b,
                reason_code="position_elsewhere",
                reason=f"the order closes the {symbol} position held at {held_at}; {b} holds "
                f"{risk.held(b, symbol) or 'none'} of it to cover {quantity or 'the order'}",
            )
            for b in brokers
            if b not in covering
        }
        return PositionPlan(closing=covering, out=out)
    if effect is PositionEffect.CLOSE:
        return PositionPlan(
            denial=Denial(
                "no_position", f"position_effect close: no broker holds a {symbol} position this {intent.side} reduces"
            )
        )
    if intent.side is Side.BUY:
        return _NOTHING
    covered = {b for b, held in reduces if quantity is not None and abs(held) >= quantity}
    out = {}
    for b in brokers:
        broker_config = config.brokers.get(b)
        if broker_config is None or b in covered:
            continue  # not configured (excluded for that already), or the sell closes a long there
        if broker_config.account_type != "margin":
            out[b] = ExcludedBroker(
                broker=b,
                reason_code="short_not_allowed",
                reason=f"{b} holds no {symbol}: the sell would open a short, and its account is a cash account "
                f"(brokers.{b}.account_type)",
            )
        elif effect is not PositionEffect.OPEN and not broker_config.allow_short:
            out[b] = ExcludedBroker(
                broker=b,
                reason_code="short_not_requested",
                reason=f"{b} holds no {symbol}: the sell would open a short, which needs position_effect open "
                f"or brokers.{b}.allow_short",
            )
    return PositionPlan(out=out)


def _too_small(intent: OrderIntent, quantity: Decimal | None, holders: list[tuple[BrokerName, Decimal]]) -> str:
    held = ", ".join(f"{b} holds {held}" for b, held in holders)
    return (
        f"the {intent.side} of {quantity} {intent.symbol} closes a position, and no one broker holds that much "
        f"({held}; orders in flight counted); send it in parts, or with position_effect open"
    )


def cash_needed(intent: OrderIntent, price: Decimal | None, ask: Decimal | None) -> Decimal | None:
    """USD the order spends when it fills, as a broker checks it: at its limit price, else at the
    fresh quote's ``ask`` for a market buy (the price it pays) where higher than ``price``, else
    at ``price``; None when nothing prices it."""
    if intent.notional is not None:
        return intent.notional
    assert intent.quantity is not None
    at = intent.limit_price if intent.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) else price
    if at is not None and ask is not None and intent.side is Side.BUY and intent.order_type is OrderType.MARKET:
        at = max(at, ask)
    return traded_value(intent.asset_class, intent.quantity, at) if at else None


def cash_exclusion(broker: BrokerName, needed: Decimal, risk: RiskView) -> ExcludedBroker | None:
    """``insufficient_buying_power`` when ``broker``'s known buying power is short of ``needed``."""
    power = risk.buying_power(broker)
    if power is None or power >= needed:
        return None
    return ExcludedBroker(
        broker=broker,
        reason_code="insufficient_buying_power",
        reason=f"{broker} can spend {_figure(broker, risk)}; the order needs {needed:.2f}",
    )


def _figure(broker: BrokerName, risk: RiskView) -> str:
    power = risk.buying_power(broker) or ZERO
    spent = risk.pending_spend.get(broker, ZERO)
    return f"{power:.2f} USD (account {power + spent:.2f} less {spent:.2f} routed since)"


def no_account_can_pay(needed: Decimal, brokers: Sequence[BrokerName], risk: RiskView) -> Denial:
    """The rejection of an order every broker that could take it is too short of cash for."""
    figures = "; ".join(f"{b} can spend {_figure(b, risk)}" for b in brokers if risk.buying_power(b) is not None)
    return Denial("insufficient_buying_power", f"no account can pay for the order ({needed:.2f} USD): {figures}")
