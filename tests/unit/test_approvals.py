"""Approval rules and the life of a hold (workers.domain.approvals)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from contracts import ApprovalStep, AssetClass, OrderIntent, Side
from workers.domain.approvals import ApprovalRefused, Hold, approval_rule
from workers.domain.config import parse_config

NOW = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
CONFIG = parse_config(
    {
        "approvals": {
            "rules": [
                {"name": "crypto-desk", "match": {"asset_class": ["crypto"], "strategy": ["desk-*"]}},
                {"name": "large", "match": {"min_notional": 50000}, "approvers": 2, "expire_after_s": 60},
                {"name": "meme", "match": {"symbol": ["GME", "AMC"]}},
            ]
        }
    }
)


def intent(**overrides: object) -> OrderIntent:
    fields: dict[str, object] = {
        "intent_id": "i-1",
        "strategy_id": "alpha",
        "symbol": "AAPL",
        "asset_class": AssetClass.EQUITY,
        "side": Side.BUY,
        "quantity": Decimal(10),
    }
    return OrderIntent.model_validate(fields | overrides)


def test_the_first_matching_rule_holds_and_an_order_no_rule_matches_is_routed() -> None:
    assert approval_rule(intent(), CONFIG, Decimal(200)) is None
    assert approval_rule(intent(quantity=Decimal(300)), CONFIG, Decimal(200)).name == "large"  # type: ignore[union-attr]
    assert approval_rule(intent(notional=Decimal(60000), quantity=None), CONFIG, None).name == "large"  # type: ignore[union-attr]
    assert approval_rule(intent(symbol="GME"), CONFIG, Decimal(20)).name == "meme"  # type: ignore[union-attr]
    crypto = intent(symbol="BTC-USD", asset_class=AssetClass.CRYPTO, quantity=Decimal(2), strategy_id="desk-a")
    assert approval_rule(crypto, CONFIG, Decimal(90000)).name == "crypto-desk"  # type: ignore[union-attr]
    assert approval_rule(intent(), parse_config({}), Decimal(200)) is None


def test_an_order_whose_size_cannot_be_told_is_held_by_a_size_rule() -> None:
    assert approval_rule(intent(), CONFIG, None).name == "large"  # type: ignore[union-attr]


def test_two_approvers_must_be_two_operators_and_one_decision_stands() -> None:
    rule = CONFIG.approvals.rules[1]
    hold = Hold.new(intent(quantity=Decimal(300)), rule, NOW, Decimal(60000))
    assert (hold.state, hold.expires_at) == (ApprovalStep.PENDING, NOW + timedelta(seconds=60))
    once = hold.approve("carol", "ok", NOW)
    assert once.state is ApprovalStep.PENDING and len(once.approvals) == 1
    for again in ("carol", " Carol "):
        with pytest.raises(ApprovalRefused, match="another operator"):
            once.approve(again, "again", NOW)
    twice = once.approve("dave", "ok too", NOW)
    assert twice.state is ApprovalStep.APPROVED
    with pytest.raises(ApprovalRefused, match="already approved"):
        twice.deny("erin", "no", NOW)
    released = twice.release(NOW)
    assert released.state is ApprovalStep.RELEASED
    events = [released.event(k) for k in range(len(released.steps))]
    assert [(e.step, e.step_no, e.approvals_given, e.operator) for e in events] == [
        (ApprovalStep.PENDING, 0, 0, ""),
        (ApprovalStep.APPROVED, 1, 1, "carol"),
        (ApprovalStep.APPROVED, 2, 2, "dave"),
        (ApprovalStep.RELEASED, 3, 2, ""),
    ]
    assert len({e.message_id for e in events}) == 4


def test_a_denied_or_expired_hold_takes_no_other_decision() -> None:
    rule = CONFIG.approvals.rules[2]
    hold = Hold.new(intent(symbol="GME"), rule, NOW, None)
    denied = hold.deny("carol", "not today", NOW)
    assert denied.state is ApprovalStep.DENIED
    with pytest.raises(ApprovalRefused, match="already denied by carol"):
        denied.approve("dave", "", NOW)
    with pytest.raises(ApprovalRefused, match="not a pending hold past its deadline"):
        hold.expire(NOW)
    late = NOW + timedelta(seconds=rule.expire_after_s)
    with pytest.raises(ApprovalRefused, match="expired"):
        hold.approve("carol", "", late)
    expired = hold.expire(late)
    assert expired.state is ApprovalStep.EXPIRED
    with pytest.raises(ApprovalRefused, match="already expired"):
        expired.deny("carol", "", late)


def test_a_strategy_cannot_decide_on_its_own_order_and_a_decider_is_named() -> None:
    hold = Hold.new(intent(), CONFIG.approvals.rules[2], NOW, None)
    for who in ("alpha", "strategy-alpha"):
        with pytest.raises(ApprovalRefused, match="cannot decide on its own order"):
            hold.approve(who, "", NOW)
    with pytest.raises(ApprovalRefused, match="say who decides"):
        hold.deny("  ", "", NOW)


def test_a_hold_survives_its_json_round_trip() -> None:
    hold = Hold.new(intent(), CONFIG.approvals.rules[1], NOW, Decimal(2000)).approve("carol", "ok", NOW)
    assert Hold.model_validate_json(hold.model_dump_json()) == hold


def test_approval_rules_are_validated() -> None:
    with pytest.raises(Exception, match="approvers"):
        parse_config({"approvals": {"rules": [{"name": "x", "approvers": 3}]}})
    with pytest.raises(Exception, match="two approval rules are named"):
        parse_config({"approvals": {"rules": [{"name": "x"}, {"name": "x"}]}})


def test_a_strategy_may_cancel_a_hold_only_while_it_waits() -> None:
    hold = Hold.new(intent(), CONFIG.approvals.rules[2], NOW, None)
    cancelled = hold.cancel("changed my mind", NOW)
    assert cancelled.state is ApprovalStep.CANCELLED and cancelled.state.is_final
    with pytest.raises(ApprovalRefused, match="already cancelled"):
        cancelled.approve("carol", "", NOW)
    with pytest.raises(ApprovalRefused, match="no longer waiting"):
        hold.approve("carol", "", NOW).cancel("too late", NOW)
