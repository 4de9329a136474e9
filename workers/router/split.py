"""The split rule: how one slice of a parent order is shared among brokers now. Pure: no I/O.

The slice is routed as one order would be (``route()``, with the same kill switches, capabilities,
rules, broker health, rate headroom, queues and scores), except that exposure, cash and positions
are left to the split itself: a broker that could not take the whole slice may still take part of
it. From the router's live view, each eligible broker gets

- its **allocation room**: what it may still take under ``max_broker_allocation`` (and its
  ``allocation_percent``) of the portfolio value, counting its exposure, the orders routed there
  since the last snapshot, and this parent's children sent there and not yet confirmed; and what
  its known buying power still pays for, when the order spends cash;
- for a sell that reduces a long (a buy that reduces a short) held at some brokers: only the
  holders, each at most what it holds (orders in flight counted), with no allocation limit
  (closing shrinks exposure, as for any order);
- its rate headroom, queue wait and score, which rank it.

``workers.domain.parents.split_slice`` then shares the slice, and says why for every broker.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from contracts import BrokerName, ExcludedBroker, OrderType, PositionEffect, RouteDecision, Side
from workers.domain.config import MbxConfig
from workers.domain.fees import traded_value
from workers.domain.parents import SplitCandidate, split_slice
from workers.platform.split_api import SplitAnswer, SplitRequest, SplitShare
from workers.router.accounts import position_plan
from workers.router.plan import BROKERS
from workers.router.risk import RiskView
from workers.router.rules import MarketView, Rejection, route

ZERO = Decimal(0)
_NO_RISK = RiskView()


def split_answer(
    request: SplitRequest, config: MbxConfig, *, market: MarketView, risk: RiskView, config_version: int = 0
) -> SplitAnswer:
    """The children of ``request``'s slice, with a reason for every broker."""
    parent = request.parent
    execution = parent.execution
    if execution is None or execution.split is None:
        return SplitAnswer(error=f"intent {parent.intent_id} does not split across brokers")
    spec = execution.split
    # The slice as one order: every broker-level check that does not depend on how it is shared.
    probe = parent.model_copy(update={"quantity": request.quantity, "execution": None, "broker": None})
    outcome = route(probe, config, market=market, risk=_NO_RISK, config_version=config_version)
    check = market.price_check
    price = (check.price if check is not None else market.reference_price) or parent.limit_price or parent.stop_price
    if isinstance(outcome, Rejection):
        why = outcome.reason + "".join(f"; {e.broker}: {e.reason}" for e in outcome.excluded)
        return SplitAnswer(
            reasons=tuple(f"{e.broker}: nothing: not eligible: {e.reason}" for e in outcome.excluded),
            unallocated=request.quantity,
            unallocated_reason=f"no broker can take it: {why}",
            reference_price=price,
            config_version=config_version,
        )
    closing = _closing_holdings(request, risk)
    if closing is None and parent.position_effect is PositionEffect.CLOSE:
        why = f"position_effect close: no broker holds a {parent.symbol} position this {parent.side} reduces"
        return SplitAnswer(
            unallocated=request.quantity, unallocated_reason=why, reference_price=price, config_version=config_version
        )
    out = {} if closing is not None else position_plan(probe, request.quantity, BROKERS, config, risk).out
    candidates = _candidates(
        request, outcome, config=config, market=market, risk=risk, price=price, closing=closing, out=out
    )
    plan = split_slice(
        request.quantity,
        candidates,
        step=parent.quantity_step,
        max_brokers=spec.max_brokers,
        min_child_quantity=spec.min_child_quantity,
        min_child_notional=spec.min_child_notional,
        price=price,
        closing_holdings=closing,
    )
    return SplitAnswer(
        children=tuple(SplitShare(broker=c.broker, quantity=c.quantity) for c in plan.children),
        reasons=plan.reasons,
        unallocated=plan.unallocated,
        unallocated_reason=plan.unallocated_reason,
        reference_price=price,
        config_version=config_version,
    )


def _closing_holdings(request: SplitRequest, risk: RiskView) -> dict[BrokerName, Decimal] | None:
    """The brokers whose position the slice reduces, with what each still holds to close (orders in
    flight and this parent's unconfirmed children counted); None when the slice closes nothing."""
    parent = request.parent
    if parent.position_effect is PositionEffect.OPEN or not risk.knows_holdings() or risk.snapshot is None:
        return None
    sign = 1 if parent.side is Side.SELL else -1
    holdings = risk.snapshot.holdings
    holders = [
        b
        for b in BROKERS
        if holdings.get(b, {}).get(parent.symbol, ZERO) * sign > 0 or risk.held(b, parent.symbol) * sign > 0
    ]
    if not holders:
        return None
    return {b: max(abs(risk.held(b, parent.symbol)) - request.unconfirmed.get(b, ZERO), ZERO) for b in holders}


def _candidates(
    request: SplitRequest,
    decision: RouteDecision,
    *,
    config: MbxConfig,
    market: MarketView,
    risk: RiskView,
    price: Decimal | None,
    closing: Mapping[BrokerName, Decimal] | None,
    out: Mapping[BrokerName, ExcludedBroker],
) -> list[SplitCandidate]:
    """Every broker as the split rule sees it: the eligible ones with their room and standing, the
    others with the router's reason."""
    scored = {c.broker: c for c in decision.candidates}
    excluded = {e.broker: f"{e.reason_code}: {e.reason}" for e in decision.excluded}
    min_headroom = config.routing.min_rate_headroom
    health = market.health or {}
    candidates = []
    for broker in BROKERS:
        score = scored.get(broker)
        position = out.get(broker)
        if score is None or position is not None:
            why = excluded.get(broker) or (f"{position.reason_code}: {position.reason}" if position else "not eligible")
            candidates.append(SplitCandidate(broker, excluded=why))
            continue
        state = health.get(broker)
        candidates.append(
            SplitCandidate(
                broker,
                headroom_orders=0 if state is not None and state.rate_limit_headroom < min_headroom else 1,
                queue_wait_s=score.expected_wait_ms / 1000,
                allocation_room=None if closing is not None else _room(request, broker, config, risk, price),
                score=score.total,
            )
        )
    return candidates


def _room(
    request: SplitRequest, broker: BrokerName, config: MbxConfig, risk: RiskView, price: Decimal | None
) -> Decimal | None:
    """The quantity ``broker`` may still take: the least of its allocation room and what its known
    buying power pays for; None when neither limits it (no snapshot, or no price to value it at)."""
    parent = request.parent
    if price is None or price <= 0:
        return None
    unit = traded_value(parent.asset_class, Decimal(1), price)
    unconfirmed = request.unconfirmed.get(broker, ZERO)
    rooms = []
    snapshot = risk.snapshot
    if snapshot is not None and snapshot.portfolio_value > 0:
        share = min(config.risk.max_broker_allocation, config.brokers[broker].allocation_percent)
        used = risk.broker_exposure(broker) + unconfirmed * unit
        rooms.append((share * snapshot.portfolio_value - used) / unit)
    power = risk.buying_power(broker)
    if power is not None and parent.side is Side.BUY:
        at = parent.limit_price if parent.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) else None
        cost = traded_value(parent.asset_class, Decimal(1), at or price)
        rooms.append(power / cost - unconfirmed)
    return max(min(rooms), ZERO) if rooms else None
