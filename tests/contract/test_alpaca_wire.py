"""The Alpaca adapter reads Alpaca's documented payloads (the golden files the fake answers
with), so the fake cannot drift from the real shapes unnoticed."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from contracts import AssetClass, OrderIntent, OrderStatus
from tests.builders import CRYPTO, OPTION, make_intent
from tests.fakes.alpaca import golden
from workers.venues.alpaca import wire


def test_documented_orders_parse() -> None:
    crypto = wire.parse_order(golden("order"))
    assert (crypto.symbol, crypto.asset_class, crypto.status) == ("ETH-USD", "crypto", OrderStatus.SUBMITTED)
    assert (crypto.quantity, crypto.limit_price, crypto.filled_quantity) == (Decimal("0.02"), Decimal(2100), 0)
    assert crypto.submitted_at == datetime(2023, 12, 12, 22, 36, 51, 313261, tzinfo=UTC)  # nanoseconds cut
    equity = wire.parse_order(golden("order_equity"))
    assert (equity.symbol, equity.status, equity.client_order_id) == (
        "AAPL",
        OrderStatus.ACCEPTED,
        "5680c4bc-9ac1-4a12-a44c-df427ba53032",
    )


def test_documented_fill_position_and_account_parse() -> None:
    fill = wire.parse_fill(golden("fill_activity"))
    assert (fill.quantity, fill.price, fill.fee) == (Decimal(2), Decimal("174.78"), 0)
    assert fill.fill_id == "20220202135509981::2d7be4ff-d1f3-43e9-856a-0f5cf5c5088e"
    line = wire.parse_position(golden("position"))
    assert (line.symbol, line.asset_class, line.quantity, line.average_cost) == (
        "AAPL",
        AssetClass.EQUITY,
        Decimal(5),
        Decimal(100),
    )
    assert (line.market_value, line.unrealized_pnl) == (Decimal(600), Decimal(100))
    account = wire.parse_account(golden("account"))
    assert (account.account_id, account.cash, account.buying_power) == (
        "PALPACA_123",
        Decimal("122086.5"),
        Decimal("245432.61"),
    )


def test_every_alpaca_status_has_a_meaning() -> None:
    documented = [
        "new",
        "partially_filled",
        "filled",
        "done_for_day",
        "canceled",
        "expired",
        "replaced",
        "pending_cancel",
        "pending_replace",
        "accepted",
        "pending_new",
        "accepted_for_bidding",
        "stopped",
        "rejected",
        "suspended",
        "calculated",
        "held",
    ]
    assert set(documented) <= set(wire.STATUSES)


def test_an_intent_becomes_alpacas_order_request() -> None:
    intent: OrderIntent = make_intent(**CRYPTO, order_type="limit", limit_price="50000")
    assert wire.order_request(intent, "c-1") == {
        "symbol": "BTC/USD",
        "side": "buy",
        "type": "limit",
        "time_in_force": "gtc",
        "client_order_id": "c-1",
        "qty": "0.01",
        "limit_price": "50000",
    }
    option = wire.order_request(make_intent(**OPTION), "c-2")
    assert option["symbol"] == "AAPL270115C00200000"
    notional = wire.order_request(make_intent(quantity=None, notional="250"), "c-3")
    assert notional["notional"] == "250" and "qty" not in notional


def test_a_working_status_with_a_partial_fill_keeps_the_fill() -> None:
    """``pending_cancel``, ``held`` and other working statuses of a partly filled order are
    partially filled in mbx, not accepted (which would contradict the fills already reported)."""
    for status in ("pending_cancel", "held", "pending_replace", "stopped", "suspended", "calculated"):
        order = wire.parse_order({**golden("order_equity"), "status": status, "filled_qty": "1"})
        assert (order.status, order.filled_quantity) == (OrderStatus.PARTIALLY_FILLED, 1), status
    unfilled = wire.parse_order({**golden("order_equity"), "status": "pending_cancel"})
    assert unfilled.status is OrderStatus.ACCEPTED


def test_done_for_day_ends_a_day_order_but_not_a_gtc_one() -> None:
    """A GTC order ``done_for_day`` works again the next trading day (its later fills count);
    a day order is over."""
    gtc = wire.parse_order({**golden("order_equity"), "status": "done_for_day", "time_in_force": "gtc"})
    assert (gtc.status, gtc.status.is_terminal) == (OrderStatus.ACCEPTED, False)
    part = wire.parse_order({**golden("order_equity"), "status": "done_for_day", "filled_qty": "1"})
    assert part.status is OrderStatus.PARTIALLY_FILLED
    day = wire.parse_order({**golden("order_equity"), "status": "done_for_day", "time_in_force": "day"})
    assert day.status is OrderStatus.EXPIRED
