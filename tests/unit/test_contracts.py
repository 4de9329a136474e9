"""The wire contract: what strategy services in any language can rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import pytest
from pydantic import ValidationError

import contracts
from contracts import AssetClass, ExecutionReport, OrderIntent, OrderStatus, Subjects, TimeInForce, symbol_token
from tests.builders import intent_payload, make_intent, make_route
from workers.platform.schemas import MODELS, write_schemas

DOCUMENTED_JSON = """{"intent_id": "strat1-000042", "strategy_id": "strat1", "symbol": "AAPL",
 "asset_class": "equity", "side": "buy", "quantity": "10", "order_type": "market",
 "time_in_force": "day"}"""


def test_documented_intent_json_is_accepted_with_ids_defaulting_to_the_intent_id() -> None:
    """The JSON other-language clients publish validates as is."""
    intent = OrderIntent.model_validate_json(DOCUMENTED_JSON)
    assert intent.quantity == Decimal("10")
    assert intent.message_id == intent.correlation_id == "strat1-000042"
    assert intent.created_at.tzinfo is not None
    assert intent.schema_version == 1


def test_intent_round_trips_through_json_with_decimals_as_strings() -> None:
    """Quantities travel as strings so no precision is lost."""
    intent = make_intent(quantity="0.123456789")
    wire = json.loads(intent.model_dump_json())
    assert wire["quantity"] == "0.123456789"
    assert OrderIntent.model_validate_json(intent.model_dump_json()) == intent


def test_messages_are_frozen_and_reject_unknown_fields() -> None:
    """A typo in a field name is an error, not a silently ignored field."""
    with pytest.raises(ValidationError, match="extra"):
        OrderIntent.model_validate(intent_payload(qty="10"))
    intent = make_intent()
    with pytest.raises(ValidationError):
        intent.symbol = "MSFT"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"quantity": None}, "exactly one of quantity or notional"),
        ({"notional": "100"}, "exactly one of quantity or notional"),
        ({"quantity": "0"}, "greater than 0"),
        ({"quantity": "NaN"}, "finite"),
        ({"order_type": "limit"}, "limit_price is required"),
        ({"order_type": "stop"}, "stop_price is required"),
        ({"order_type": "stop_limit", "limit_price": "10"}, "stop_price is required"),
        ({"limit_price": "10"}, "limit_price is not allowed"),
        ({"asset_class": "bond"}, "equity"),
        ({"side": "short"}, "buy"),
        ({"time_in_force": "gtd"}, "day"),
        ({"broker": "etrade"}, "alpaca"),
        ({"intent_id": "has space"}, "pattern"),
        ({"intent_id": "x" * 49}, "at most 48"),
        ({"strategy_id": "a.b"}, "pattern"),
        ({"symbol": "aapl"}, "pattern"),
    ],
)
def test_invalid_intents_fail_validation_with_a_reason(overrides: dict[str, object], message: str) -> None:
    """Every malformed intent is refused with a message that says what is wrong."""
    with pytest.raises(ValidationError, match=message):
        OrderIntent.model_validate(intent_payload(**overrides))


def test_order_shapes_with_the_right_prices_are_accepted() -> None:
    """Limit, stop and stop-limit orders validate when they carry their prices."""
    assert make_intent(order_type="limit", limit_price="101.5").limit_price == Decimal("101.5")
    assert make_intent(order_type="stop", stop_price="99").stop_price == Decimal("99")
    both = make_intent(order_type="stop_limit", stop_price="99", limit_price="98.5")
    assert (both.stop_price, both.limit_price) == (Decimal("99"), Decimal("98.5"))


def test_crypto_time_in_force_defaults_to_gtc_and_equity_to_day() -> None:
    """Crypto venues have no day orders, so an omitted time in force means gtc for crypto."""
    crypto = make_intent(symbol="BTC-USD", asset_class="crypto", time_in_force=None)
    equity = make_intent(time_in_force=None)
    assert crypto.time_in_force is TimeInForce.GTC
    assert equity.time_in_force is TimeInForce.DAY
    assert make_intent(symbol="BTC-USD", asset_class="crypto", time_in_force="ioc").time_in_force is TimeInForce.IOC


@pytest.mark.parametrize(
    ("overrides", "fractional"),
    [
        ({"quantity": "10"}, False),
        ({"quantity": "10.0"}, False),
        ({"quantity": "0.5"}, True),
        ({"quantity": None, "notional": "25"}, True),
    ],
)
def test_is_fractional(overrides: dict[str, object], fractional: bool) -> None:
    """Fractional means a non-whole quantity or a dollar amount."""
    assert make_intent(**overrides).is_fractional is fractional


def test_terminal_statuses() -> None:
    """Filled, cancelled, rejected, expired and failed end an order; the rest do not."""
    terminal = {s for s in OrderStatus if s.is_terminal}
    assert terminal == {"filled", "cancelled", "rejected", "expired", "failed"}


def test_every_message_type_round_trips() -> None:
    """Route decisions embed the intent and survive JSON both ways."""
    route = make_route()
    assert type(route).model_validate_json(route.model_dump_json()) == route
    report = ExecutionReport(
        intent_id="i-1",
        strategy_id="s",
        broker=None,
        status=OrderStatus.REJECTED,
        symbol="AAPL",
        asset_class=AssetClass.EQUITY,
        side="buy",
        final=True,
    )
    assert ExecutionReport.model_validate_json(report.model_dump_json()) == report


def test_subjects_follow_the_design_table() -> None:
    """Subject strings, with a custom prefix and symbols made into single tokens."""
    s = Subjects()
    assert s.intent("strat1") == "mbx.orders.intent.strat1"
    assert s.route("alpaca", "s1") == "mbx.routes.alpaca.s1"
    assert s.execution("alpaca", OrderStatus.FILLED, "s1") == "mbx.exec.alpaca.filled.s1"
    assert s.execution(None, OrderStatus.REJECTED, "s1") == "mbx.exec.unrouted.rejected.s1"
    assert s.fill("alpaca", "BRK.B", "s1") == "mbx.fills.alpaca.BRK_B.s1"
    assert s.cancel_reject("alpaca", "s1") == "mbx.exec.alpaca.cancel_rejected.s1"
    # A strategy's results, and nothing of another's, match its three wildcards.
    own = s.results_of("s1")
    assert own == ("mbx.routes.*.s1", "mbx.exec.*.*.s1", "mbx.fills.*.*.s1")
    assert s.is_cancel_reject("mbx.exec.alpaca.cancel_rejected.s1")
    assert s.is_cancel_reject("mbx.exec.alpaca.cancel_rejected")  # version 1, still readable
    assert not s.is_cancel_reject("mbx.exec.alpaca.filled.s1")
    # Executors consume routes of any strategy, and version-1 routes still stored.
    assert s.routes_to("ibkr") == ("mbx.routes.ibkr.*", "mbx.routes.ibkr")
    assert s.dlq("router") == "mbx.dlq.router"
    assert [st.name for st in s.streams] == ["ORDERS", "ROUTES", "EXECUTIONS", "POSITIONS", "APPROVALS", "DLQ"]
    assert s.approval("pending") == "mbx.approvals.pending"
    assert s.pending_approval("s1") == "mbx.exec.unrouted.pending_approval.s1"
    assert s.is_pending_approval(s.pending_approval("s1")) and not s.is_pending_approval(s.refusal("s1"))
    assert Subjects("desk2").stream_name("ORDERS") == "DESK2_ORDERS"
    assert symbol_token("AAPL  270115C00200000") == "AAPL__270115C00200000"
    with pytest.raises(ValueError, match="one token"):
        Subjects("a.b")


def test_all_is_sorted_and_complete() -> None:
    """The public surface is explicit."""
    assert contracts.__all__ == sorted(contracts.__all__, key=lambda n: (not n.isupper(), n))
    for name in contracts.__all__:
        assert hasattr(contracts, name)


def test_contracts_never_import_workers_or_nats() -> None:
    """Strategy services can depend on contracts alone (pydantic and the standard library)."""
    code = (
        "import sys, contracts; print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('workers', 'nats', 'faststream', 'sqlalchemy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_committed_schemas_match_the_models() -> None:
    """The JSON Schemas and the AsyncAPI document in contracts/schemas/ are up to date."""
    assert write_schemas(check=True) == [], "run `make schemas` and commit the result"
    assert len(MODELS) == 18


def test_fill_score_falls_with_rejections_and_slippage_and_stays_in_bounds() -> None:
    from workers.readmodel.quality import SLIPPAGE_CAP_BPS, fill_score

    assert fill_score(1.0, 0.0) == 1.0
    assert fill_score(1.0, -20.0) == 1.0  # price improvement does not lift it above the fill rate
    assert fill_score(0.5, None) == 0.5
    assert fill_score(1.0, SLIPPAGE_CAP_BPS / 2) == 0.5
    assert fill_score(1.0, SLIPPAGE_CAP_BPS * 3) == 0.0
    assert fill_score(0.8, 10.0) < fill_score(0.8, 5.0) < fill_score(0.9, 5.0)


def test_position_effect_is_optional_open_or_close_and_nothing_else() -> None:
    """An intent without position_effect leaves it empty; open and close are accepted; any other word is refused."""
    assert make_intent().position_effect is None
    assert make_intent(position_effect="open").position_effect is contracts.PositionEffect.OPEN
    assert make_intent(position_effect="close").position_effect is contracts.PositionEffect.CLOSE
    with pytest.raises(ValidationError, match="position_effect"):
        make_intent(position_effect="flip")
    assert "position_effect" in OrderIntent.model_json_schema()["properties"]


def test_messages_without_the_account_fields_still_parse_at_schema_version_1() -> None:
    """Buying power, holdings and the closed position are optional additions: payloads from before them still parse."""
    old = {"portfolio_value": "1000", "by_broker": {"alpaca": "10"}, "positions": {"AAPL": "1"}}
    snapshot = contracts.ExposureSnapshot.model_validate(old)
    assert snapshot.buying_power == {} and snapshot.holdings == {} and snapshot.schema_version == 1
    route = make_route()
    assert route.closes_position is None
    assert contracts.RouteDecision.model_validate_json(route.model_dump_json()) == route
