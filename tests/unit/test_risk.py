"""Pre-trade risk: kill switches, intent limits, per-broker allocation, in-flight exposure."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from contracts import BrokerName, ExposureSnapshot, RouteDecision
from tests.builders import make_intent
from workers.domain.config import MbxConfig, config_to_json, parse_config
from workers.router.registry import BrokerHealth
from workers.router.risk import RiskView
from workers.router.rules import MarketView, Rejection, route
from workers.router.state import RouterState

PRICE = MarketView(reference_price=Decimal(100))  # 10 shares = $1,000


def outcome(
    risk: dict[str, Any] | None = None,
    view: RiskView | None = None,
    brokers: dict[str, Any] | None = None,
    **intent: Any,
) -> RouteDecision | Rejection:
    raw: dict[str, Any] = {"risk": risk or {}}
    if brokers is not None:
        raw["brokers"] = brokers
    return route(make_intent(**intent), parse_config(raw), market=PRICE, risk=view)


@pytest.mark.parametrize(
    ("risk", "intent", "code"),
    [
        ({"kill_switches": {"all": True}}, {}, "kill_switch"),
        ({"kill_switches": {"strategies": ["strat*"]}}, {}, "kill_switch"),
        ({"kill_switches": {"symbols": ["AAPL"]}}, {}, "kill_switch"),
        ({"max_order_notional": 999}, {}, "max_order_notional"),
        ({"reduce_only": True}, {}, "reduce_only"),
        ({"max_symbol_exposure": 500}, {}, "max_symbol_exposure"),
    ],
)
def test_intent_level_limits_deny_with_a_reason_code(risk: dict[str, Any], intent: dict[str, Any], code: str) -> None:
    denied = outcome(risk, **intent)
    assert isinstance(denied, Rejection)
    assert denied.reason_code == code
    assert denied.reason


def test_limits_that_hold_let_the_order_through() -> None:
    assert isinstance(
        outcome(
            {
                "max_order_notional": 1000,
                "max_symbol_exposure": 1000,
                "kill_switches": {"symbols": ["MSFT"], "strategies": ["other"]},
            }
        ),
        RouteDecision,
    )


def test_reduce_only_accepts_an_order_that_shrinks_the_position() -> None:
    view = RiskView(ExposureSnapshot(portfolio_value=Decimal(10_000), positions={"AAPL": Decimal(25)}))
    assert isinstance(outcome({"reduce_only": True}, view, side="sell"), RouteDecision)
    assert isinstance(outcome({"reduce_only": True}, view, side="sell", quantity="30"), Rejection)  # would flip
    assert isinstance(outcome({"reduce_only": True}, view, side="buy"), Rejection)


def test_a_sell_nets_against_symbol_exposure() -> None:
    """Selling into a long position lowers net exposure, so it passes a limit a buy would break."""
    view = RiskView(
        ExposureSnapshot(
            portfolio_value=Decimal(10_000),
            by_symbol={"AAPL": Decimal(1_500)},
            holdings={BrokerName.ALPACA: {"AAPL": Decimal(15)}},
        )
    )
    assert isinstance(outcome({"max_symbol_exposure": 2000}, view, side="buy"), Rejection)
    assert isinstance(outcome({"max_symbol_exposure": 2000}, view, side="sell"), RouteDecision)


def test_allocation_percent_moves_the_order_to_a_broker_with_room() -> None:
    """Alpaca's 40% share of a $10k portfolio is full; the order goes elsewhere, explained."""
    view = RiskView(ExposureSnapshot(portfolio_value=Decimal(10_000), by_broker={BrokerName.ALPACA: Decimal(3_500)}))
    brokers = {b.value: {"allocation_percent": "0.4"} for b in BrokerName}
    decision = outcome(None, view, brokers)
    assert isinstance(decision, RouteDecision)
    assert decision.broker is not BrokerName.ALPACA
    reasons = {e.broker: e.reason_code for e in decision.excluded}
    assert reasons[BrokerName.ALPACA] == "allocation_percent"


def test_a_broker_past_its_allocation_stays_out_when_every_broker_is_near_its_rate_limit() -> None:
    """Brokers near their rate limit are taken back when no other can take the order; one whose
    allocation is full is not among them, however its budget stands."""
    view = RiskView(ExposureSnapshot(portfolio_value=Decimal(10_000), by_broker={BrokerName.ALPACA: Decimal(3_500)}))
    brokers = {"alpaca": {"allocation_percent": "0.4"}, "ibkr": {}}
    spent = BrokerHealth(up=True, reason="", latency_ms=10.0, rate_limit_headroom=0.0)
    market = MarketView(reference_price=Decimal(100), health={BrokerName.ALPACA: spent, BrokerName.IBKR: spent})
    decision = route(make_intent(), parse_config({"brokers": brokers}), market=market, risk=view)
    assert isinstance(decision, RouteDecision)
    assert decision.broker is BrokerName.IBKR
    assert {e.broker: e.reason_code for e in decision.excluded}[BrokerName.ALPACA] == "allocation_percent"


def test_without_a_snapshot_allocation_limits_do_not_apply() -> None:
    assert outcome().broker is BrokerName.ALPACA  # type: ignore[union-attr]


def test_in_flight_orders_count_until_a_newer_snapshot_includes_them() -> None:
    """Two quick orders see each other; a snapshot taken after them replaces the local count."""
    config = parse_config({"risk": {"max_broker_allocation": "0.8"}})
    state = RouterState(config)
    state.apply_exposure(
        ExposureSnapshot(portfolio_value=Decimal(10_000), by_broker={BrokerName.ALPACA: Decimal(7_000)})
        .model_dump_json()
        .encode()
    )
    first = route(make_intent(), config, market=PRICE, risk=state.risk_view())
    assert isinstance(first, RouteDecision) and first.broker is BrokerName.ALPACA  # 7k + 1k <= 8k
    state.record(first, Decimal(100))
    second = route(make_intent(), config, market=PRICE, risk=state.risk_view())
    assert isinstance(second, RouteDecision) and second.broker is not BrokerName.ALPACA  # 7k + 1k + 1k > 8k
    later = ExposureSnapshot(portfolio_value=Decimal(10_000), by_broker={BrokerName.ALPACA: Decimal(7_000)})
    state.apply_exposure(later.model_dump_json().encode())
    assert state.risk_view().broker_exposure(BrokerName.ALPACA) == Decimal(7_000)
    state.clear_exposure()
    assert state.risk_view().snapshot is None


def test_live_config_round_trips_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """What goes to KV is the whole trading config minus secrets, and it parses back."""
    monkeypatch.setenv("K", "sekrit-9")
    config = parse_config(
        {
            "brokers": {"alpaca": {"credentials": {"api_key": "${K}"}}},
            "routing": {"rules": [{"name": "r", "prefer": ["ibkr"]}]},
        }
    )
    raw = config_to_json(config)
    assert b"sekrit-9" not in raw and b"credentials" not in raw
    state = RouterState(MbxConfig())
    assert state.apply_config(raw, 7) is None
    assert state.version == 7
    assert state.config.routing.rules[0].name == "r"
    assert "unknown key" in (state.apply_config(b'{"routing": {"wieghts": {}}}', 8) or "")
    assert state.version == 7


def test_min_broker_diversification_sends_new_buys_to_a_broker_without_positions() -> None:
    """Everything sits at alpaca and two brokers are required: a buy goes elsewhere, a sell does not."""
    view = RiskView(
        ExposureSnapshot(
            portfolio_value=Decimal(100_000),
            by_broker={BrokerName.ALPACA: Decimal(5_000)},
            holdings={BrokerName.ALPACA: {"AAPL": Decimal(50)}},
        )
    )
    risk = {"min_broker_diversification": 2}
    buy = outcome(risk, view)
    assert isinstance(buy, RouteDecision)
    assert buy.broker is not BrokerName.ALPACA
    assert {e.broker: e.reason_code for e in buy.excluded}[BrokerName.ALPACA] == "min_broker_diversification"
    sell = outcome(risk, view, side="sell")
    assert isinstance(sell, RouteDecision) and sell.broker is BrokerName.ALPACA
    spread = RiskView(
        ExposureSnapshot(
            portfolio_value=Decimal(100_000),
            by_broker={BrokerName.ALPACA: Decimal(5_000), BrokerName.IBKR: Decimal(1_000)},
        )
    )
    assert outcome(risk, spread).broker is BrokerName.ALPACA  # type: ignore[union-attr]
