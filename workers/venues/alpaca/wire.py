"""Alpaca Trading API v2 payloads, both ways: an intent as the JSON of ``POST /v2/orders``, and
Alpaca's order, fill activity, position and account objects as the venue's types.

Shapes follow Alpaca's published OpenAPI spec (``Order``, ``TradingActivities``, ``Position``,
``Account``); ``tests/fakes/golden/alpaca/`` holds its documented examples, which these parsers
must read.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from contracts import AccountSnapshot, AssetClass, OrderIntent, OrderStatus, PositionLine
from workers.domain.venue import VenueFill, VenueOrder
from workers.venues.http import parse_time

# Alpaca's order statuses, by what they mean for mbx (reference section 7.1).
STATUSES: dict[str, OrderStatus] = {
    "pending_new": OrderStatus.SUBMITTED,
    "pending_review": OrderStatus.SUBMITTED,
    "accepted_for_bidding": OrderStatus.SUBMITTED,
    "new": OrderStatus.ACCEPTED,
    "accepted": OrderStatus.ACCEPTED,
    "held": OrderStatus.ACCEPTED,
    "calculated": OrderStatus.ACCEPTED,
    "pending_replace": OrderStatus.ACCEPTED,
    "replaced": OrderStatus.ACCEPTED,
    "pending_cancel": OrderStatus.ACCEPTED,
    "stopped": OrderStatus.ACCEPTED,
    "suspended": OrderStatus.ACCEPTED,
    "partially_filled": OrderStatus.PARTIALLY_FILLED,
    "filled": OrderStatus.FILLED,
    "done_for_day": OrderStatus.EXPIRED,  # a day order's end; a GTC order resumes (``parse_order``)
    "canceled": OrderStatus.CANCELLED,
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
}

ASSET_CLASSES = {"us_equity": AssetClass.EQUITY, "us_option": AssetClass.OPTION, "crypto": AssetClass.CRYPTO}


def alpaca_symbol(intent: OrderIntent) -> str:
    """Alpaca writes crypto pairs with a slash (``BTC/USD``), options as OCC symbols without the
    padding spaces."""
    if intent.asset_class is AssetClass.CRYPTO:
        return intent.symbol.replace("-", "/")
    return intent.symbol.replace(" ", "")


def our_symbol(symbol: str, asset_class: str) -> str:
    return symbol.replace("/", "-") if asset_class == "crypto" else symbol


def order_request(intent: OrderIntent, client_order_id: str) -> dict[str, Any]:
    """The body of ``POST /v2/orders``; decimals travel as strings, as Alpaca sends them."""
    body: dict[str, Any] = {
        "symbol": alpaca_symbol(intent),
        "side": str(intent.side),
        "type": str(intent.order_type),
        "time_in_force": str(intent.time_in_force or "gtc"),
        "client_order_id": client_order_id,
    }
    if intent.quantity is not None:
        body["qty"] = str(intent.quantity)
    else:
        body["notional"] = str(intent.notional)
    if intent.limit_price is not None:
        body["limit_price"] = str(intent.limit_price)
    if intent.stop_price is not None:
        body["stop_price"] = str(intent.stop_price)
    return body


def _decimal(value: Any) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value))


def parse_order(data: dict[str, Any], fills: list[VenueFill] | None = None) -> VenueOrder:
    """Alpaca's ``Order`` object. ``fills`` are its executions, read from the account's fill
    activities (the order object has only the totals)."""
    status = STATUSES.get(str(data.get("status")), OrderStatus.ACCEPTED)
    asset = ASSET_CLASSES.get(str(data.get("asset_class")), AssetClass.EQUITY)
    filled = _decimal(data.get("filled_qty")) or Decimal(0)
    if data.get("status") == "done_for_day" and data.get("time_in_force") == "gtc":
        # Done for today only: a GTC order works again the next trading day and may fill then.
        status = OrderStatus.ACCEPTED
    if status in (OrderStatus.SUBMITTED, OrderStatus.ACCEPTED) and filled > 0:
        # Working but partly filled (``pending_cancel``, ``held``, ``done_for_day`` ...): the
        # fills already made stay counted.
        status = OrderStatus.PARTIALLY_FILLED
    quantity = _decimal(data.get("qty"))
    if quantity is None:  # a notional order: its size is known once it fills
        quantity = filled
    return VenueOrder(
        broker_order_id=str(data["id"]),
        client_order_id=str(data.get("client_order_id") or ""),
        status=status,
        quantity=quantity,
        symbol=our_symbol(str(data.get("symbol") or ""), str(asset)),
        side=str(data.get("side") or ""),
        asset_class=str(asset),
        limit_price=_decimal(data.get("limit_price")),
        submitted_at=parse_time(data.get("submitted_at") or data.get("created_at")),
        filled_quantity=filled,
        average_price=_decimal(data.get("filled_avg_price")),
        fills=list(fills or []),
        reason=str(data.get("status")) if status in (OrderStatus.REJECTED, OrderStatus.EXPIRED) else "",
    )


def parse_fill(activity: dict[str, Any]) -> VenueFill:
    """One ``FILL`` trading activity. Alpaca charges no commission on the fill (regulatory fees
    and crypto fees are posted at the end of the day as separate activities)."""
    return VenueFill(
        fill_id=str(activity["id"]),
        quantity=Decimal(str(activity["qty"])),
        price=Decimal(str(activity["price"])),
        fee=Decimal(0),
        executed_at=parse_time(activity.get("transaction_time")) or datetime.fromtimestamp(0).astimezone(),
    )


def parse_position(data: dict[str, Any]) -> PositionLine:
    asset = ASSET_CLASSES.get(str(data.get("asset_class")), AssetClass.EQUITY)
    quantity = Decimal(str(data["qty"]))
    if data.get("side") == "short" and quantity > 0:
        quantity = -quantity
    return PositionLine(
        symbol=our_symbol(str(data["symbol"]), str(asset)),
        asset_class=asset,
        quantity=quantity,
        average_cost=abs(Decimal(str(data["avg_entry_price"]))),
        market_price=abs(_decimal(data.get("current_price")) or Decimal(0)),
        market_value=_decimal(data.get("market_value")) or Decimal(0),
        unrealized_pnl=_decimal(data.get("unrealized_pl")) or Decimal(0),
    )


def parse_account(data: dict[str, Any]) -> AccountSnapshot:
    return AccountSnapshot(
        account_id=str(data.get("account_number") or data.get("id")),
        currency=str(data.get("currency") or "USD"),
        cash=Decimal(str(data["cash"])),
        buying_power=Decimal(str(data["buying_power"])),
        portfolio_value=Decimal(str(data.get("portfolio_value") or data.get("equity"))),
    )
