"""The replay's reconstruction of a recorded decision's inputs (``workers.router.whatif``)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from contracts import BrokerName, ExcludedBroker, RouteDecision
from tests.builders import make_intent, make_route
from workers.cli.common import console
from workers.cli.whatif import SHOWN, print_whatif, report
from workers.domain.config import MbxConfig, parse_config
from workers.ops.whatif import ROWS_KEPT, WhatIfReport
from workers.router.rules import MarketView, route
from workers.router.whatif import market_as_recorded, recorded_decision, replay


def _row(decision: RouteDecision) -> dict[str, Any]:
    intent = decision.intent
    return {
        "intent_id": decision.intent_id,
        "strategy_id": decision.strategy_id,
        "broker_name": str(decision.broker),
        "rule": decision.rule,
        "decided_at": decision.created_at,
        "decision": decision.model_dump(
            mode="json", include={"reason", "candidates", "excluded", "config_version", "reference_price", "quote"}
        ),
        "symbol": intent.symbol,
        "asset_class": str(intent.asset_class),
        "side": str(intent.side),
        "order_type": str(intent.order_type),
        "quantity": intent.quantity,
        "notional": intent.notional,
    }


def test_recorded_exclusions_become_the_broker_state_the_replay_routes_in() -> None:
    """Down stays down, rate-limited has no headroom, a named queue is kept, others are up."""
    excluded = (
        ExcludedBroker(broker=BrokerName.ALPACA, reason_code="down", reason="no heartbeat"),
        ExcludedBroker(broker=BrokerName.SCHWAB, reason_code="rate_limited", reason="schwab has 1% left"),
        ExcludedBroker(
            broker=BrokerName.IBKR,
            reason_code="queue_wait",
            reason="ibkr has 4 orders queued, about 8.0s to wait (routing.max_queue_wait_s is 2s)",
        ),
    )
    market = market_as_recorded(make_route(excluded=excluded))
    assert market.health is not None
    assert not market.health[BrokerName.ALPACA].up
    assert market.health[BrokerName.SCHWAB].rate_limit_headroom == 0.0
    assert market.queued[BrokerName.IBKR] == 4 and market.drain[BrokerName.IBKR] == 2.0
    assert market.health[BrokerName.ROBINHOOD].up


def test_a_decision_replayed_under_its_own_config_is_unchanged() -> None:
    """A live decision stored and read back routes to the same broker by the same rule."""
    config = MbxConfig()
    live = route(make_intent(), config, market=MarketView(reference_price=Decimal(100)))
    assert isinstance(live, RouteDecision)
    recorded = recorded_decision(_row(live))
    assert recorded.intent.quantity == Decimal(10) and recorded.intent.broker is None
    assert replay([recorded], config).changed == []


def test_a_strategys_preference_is_rebuilt_from_the_rule() -> None:
    """A decision by ``preference`` replays with the strategy's broker named again."""
    live = route(make_intent(broker=BrokerName.IBKR), MbxConfig())
    assert isinstance(live, RouteDecision) and live.rule == "preference"
    assert recorded_decision(_row(live)).intent.broker is BrokerName.IBKR


def test_a_long_replay_prints_the_first_changes_and_the_report_keeps_every_one() -> None:
    """Past ``SHOWN`` changed decisions the command says how many more there are instead of
    printing each; the --json report counts and lists every one, with the printed figures."""
    config, many = MbxConfig(), SHOWN + 7
    decisions = []
    for _ in range(many):
        live = route(make_intent(), config, market=MarketView(reference_price=Decimal(100)))
        assert isinstance(live, RouteDecision)
        decisions.append(recorded_decision(_row(live)))
    other = parse_config({"routing": {"rules": [{"name": "all-ibkr", "prefer": ["ibkr"]}]}})
    result = replay(decisions, other)
    with console.capture() as printed:
        print_whatif(result, 0)
    text = printed.get()
    assert f"{many} recorded intents replayed; {many} decisions change" in text
    assert "... 7 more changed decisions: see the --csv or --json detail" in text
    assert sum(d.intent_id in text for d in decisions) == SHOWN

    written = json.loads(json.dumps(report(result, 3), default=str))
    assert (written["replayed"], written["changed"], written["rejected"], written["rejected_unrouted"]) == (
        many,
        many,
        0,
        3,
    )
    assert written["mix"] == [
        {"broker": "alpaca", "before": many, "after": 0},
        {"broker": "ibkr", "before": 0, "after": many},
    ]
    assert written["rule_effect"] == [
        {"rule": "default:equity", "before": many, "after": 0},
        {"rule": "rule:all-ibkr", "before": 0, "after": many},
    ]
    fees_before, fees_after = result.fees()
    assert written["fees_usd"] == {"before": str(fees_before), "after": str(fees_after)}
    assert [row["intent_id"] for row in written["detail"]] == [d.intent_id for d in decisions]
    assert all(row["changed"] and row["new_broker"] == "ibkr" for row in written["detail"])

    # What the dashboard keeps of a big report: the counts, and the first ROWS_KEPT intents of each list.
    big = WhatIfReport.from_json(written | {"detail": written["detail"] * 20})
    assert (big.changed, len(big.changed_rows), big.rejected_rows, big.held_rows) == (many, ROWS_KEPT, (), ())
    assert big.fees_after == fees_after and big.changed_rows[0] == written["detail"][0]


def test_approval_rules_hold_intents_at_the_recorded_price_beside_those_held_when_recorded() -> None:
    """An approval rule of the replayed config holds the intents it matches at the recorded
    price (and, with a size bound, those recorded without a usable quote); the intents held when
    recorded are counted beside them, per rule, in the summary and the report."""
    config = MbxConfig()
    small, large = make_intent(quantity="2"), make_intent(quantity="50")
    unpriced = make_intent(quantity="1", order_type="limit", limit_price="100")  # routed at its limit price
    decisions = []
    for intent, price in ((small, Decimal(100)), (large, Decimal(100)), (unpriced, None)):
        live = route(intent, config, market=MarketView(reference_price=price or Decimal(100)))
        assert isinstance(live, RouteDecision)
        recorded = _row(live)
        if price is None:
            recorded["decision"]["reference_price"] = None  # no usable quote was recorded
        decisions.append(recorded_decision(recorded))
    other = parse_config({"approvals": {"rules": [{"name": "big", "match": {"min_notional": 1000}}]}})
    result = replay(decisions, other, {small.intent_id: "old-rule"})
    assert [r.new_hold for r in result.rows] == [None, "big", "big"]
    assert [r.old_hold for r in result.rows] == ["old-rule", None, None]
    assert result.changed == []  # held first, then routed as before once approved
    assert [(e.rule, e.before, e.after) for e in result.hold_effect()] == [("big", 0, 2), ("old-rule", 1, 0)]
    with console.capture() as printed:
        print_whatif(result, 0)
    text = printed.get()
    assert "2 would be held for approval before routing (1 held when recorded)" in text
    assert f"would be held by big: {large.intent_id} (AAPL); routed at once when recorded" in text
    written = report(result, 0)
    assert (written["held"], written["held_before"]) == (2, 1)
    assert written["hold_effect"] == [
        {"rule": "big", "before": 0, "after": 2},
        {"rule": "old-rule", "before": 1, "after": 0},
    ]
    assert [(row["old_hold"], row["new_hold"]) for row in written["detail"]] == [
        ("old-rule", None),
        (None, "big"),
        (None, "big"),
    ]
    assert replay(decisions, config).held == []  # no approval rule, nothing held
