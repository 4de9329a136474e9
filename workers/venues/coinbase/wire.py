"""Coinbase Advanced Trade payloads, both ways: an intent as ``POST /api/v3/brokerage/orders``
(``order_configuration``), and Coinbase's order, fill and account objects as the venue's types.
Field names follow Coinbase's API reference (and the ``Order``, ``Fill`` and create-order types of
its official SDK); ``tests/fakes/golden/coinbase/`` holds examples in those shapes."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from contracts import OrderIntent, OrderStatus, OrderType, TimeInForce
from workers.domain.venue import VenueFill, VenueOrder
from workers.venues.http import parse_time

STATUSES: dict[str, OrderStatus] = {
    "PENDING": OrderStatus.SUBMITTED,
    "QUEUED": OrderStatus.SUBMITTED,
    "OPEN": OrderStatus.ACCEPTED,
    "CANCEL_QUEUED": OrderStatus.ACCEPTED,
    "UNKNOWN_ORDER_STATUS": OrderStatus.ACCEPTED,
    "FILLED": OrderStatus.FILLED,
    "CANCELLED": OrderStatus.CANCELLED,
    "EXPIRED": OrderStatus.EXPIRED,
    "FAILED": OrderStatus.REJECTED,
}

NOT_ORDER_SPECIFIC = frozenset({"INSUFFICIENT_FUND", "INSUFFICIENT_FUNDS", "UNKNOWN_FAILURE_REASON"})
"""Failure reasons another broker may not share (the others fail anywhere: a bad size, price
or product)."""


def order_configuration(intent: OrderIntent) -> dict[str, Any]:
    size = {"base_size": str(intent.quantity)} if intent.quantity is not None else {"quote_size": str(intent.notional)}
    if intent.order_type is OrderType.MARKET:
        return {"market_market_ioc": size}
    if intent.order_type is OrderType.LIMIT:
        limit = {**size, "limit_price": str(intent.limit_price)}
        if intent.time_in_force is TimeInForce.IOC:
            return {"sor_limit_ioc": limit}
        if intent.time_in_force is TimeInForce.FOK:
            return {"limit_limit_fok": limit}
        return {"limit_limit_gtc": {**limit, "post_only": False}}
    stop = {**size, "limit_price": str(intent.limit_price), "stop_price": str(intent.stop_price)}
    return {"stop_limit_stop_limit_gtc": {**stop, "stop_direction": _stop_direction(intent)}}


def _stop_direction(intent: OrderIntent) -> str:
    return "STOP_DIRECTION_STOP_UP" if str(intent.side) == "buy" else "STOP_DIRECTION_STOP_DOWN"


def order_request(intent: OrderIntent, client_order_id: str) -> dict[str, Any]:
    return {
        "client_order_id": client_order_id,
        "product_id": intent.symbol,
        "side": str(intent.side).upper(),
        "order_configuration": order_configuration(intent),
    }


def _decimal(value: Any) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else Decimal(0)


def _configured(data: dict[str, Any]) -> dict[str, Any]:
    configuration = data.get("order_configuration") or {}
    return next(iter(configuration.values()), {}) if isinstance(configuration, dict) else {}


def parse_order(data: dict[str, Any], fills: list[VenueFill] | None = None) -> VenueOrder:
    filled = _decimal(data.get("filled_size"))
    status = STATUSES.get(str(data.get("status")), OrderStatus.ACCEPTED)
    if status is OrderStatus.ACCEPTED and filled > 0:
        status = OrderStatus.PARTIALLY_FILLED
    configured = _configured(data)
    size = configured.get("base_size")
    average = data.get("average_filled_price")
    return VenueOrder(
        broker_order_id=str(data["order_id"]),
        client_order_id=str(data.get("client_order_id") or ""),
        status=status,
        quantity=_decimal(size) if size else filled,
        symbol=str(data.get("product_id") or ""),
        side=str(data.get("side") or "").lower(),
        asset_class="crypto",
        limit_price=_decimal(configured["limit_price"]) if configured.get("limit_price") else None,
        submitted_at=parse_time(data.get("created_time")),
        filled_quantity=filled,
        average_price=_decimal(average) if filled > 0 and average else None,
        fees=_decimal(data.get("total_fees")),
        fills=list(fills or []),
        reason=str(data.get("reject_reason") or data.get("reject_message") or ""),
    )


def parse_fill(data: dict[str, Any]) -> VenueFill:
    """One fill; Coinbase charges its fee on the fill (``commission``)."""
    price, size = _decimal(data["price"]), _decimal(data["size"])
    return VenueFill(
        fill_id=str(data.get("entry_id") or data["trade_id"]),
        quantity=size / price if data.get("size_in_quote") and price > 0 else size,
        price=price,
        fee=_decimal(data.get("commission")),
        executed_at=parse_time(data.get("trade_time")) or datetime.fromtimestamp(0).astimezone(),
    )
