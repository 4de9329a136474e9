"""Coinbase Advanced Trade over its REST API, with a thin async ``httpx`` client and a fresh JWT
per request. Not coinbase-advanced-py: its REST client is synchronous ``requests`` with no
timeout, and it pins an old ``websockets``.

The client order id is the intent id. Coinbase does not refuse a repeated one: it answers with
the original order, so a resubmission is harmless, but a reused id on a *different* order would
"succeed" without placing anything; the adapter checks that the order it got back is this
intent's (product and side). Business failures come back as HTTP 200 with ``success: false``.
There is no lookup by client order id: recent orders are listed and matched. Coinbase has no
paper environment: this adapter trades real money (``mbx up --live``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from websockets.asyncio.client import ClientConnection

from contracts import AccountSnapshot, AssetClass, BrokerName, OrderIntent, PositionLine
from workers.domain.venue import (
    VenueError,
    VenueFill,
    VenueOrder,
    VenueRejected,
)
from workers.venues.coinbase import wire
from workers.venues.coinbase.auth import Signer
from workers.venues.http import error_text
from workers.venues.http_venue import HttpVenue, StreamRefused, as_far_as_known, read_after_placing

log = structlog.get_logger("mbx.coinbase")

BASE_URL = "https://api.coinbase.com"
USER_STREAM_URL = "wss://advanced-trade-ws-user.coinbase.com"
PREFIX = "/api/v3/brokerage"
PAGE = 100
LISTING_MARGIN = timedelta(seconds=5)


class CoinbaseVenue(HttpVenue):
    """The ``Venue`` protocol at Coinbase. ``transport`` replaces the network (tests)."""

    broker = BrokerName.COINBASE
    renew_hint = "COINBASE_API_KEY / COINBASE_API_SECRET"
    read_prefix = PREFIX
    not_found = (400, 404)

    def __init__(
        self,
        key_name: str,
        private_key: str,
        *,
        base_url: str = BASE_URL,
        stream_url: str = USER_STREAM_URL,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, timeout_s, sign=self._sign_request, transport=transport)
        self._stream_url = stream_url
        self._host = urlsplit(self._base_url).netloc
        self._signer = Signer(key_name, private_key)

    async def _probe(self) -> None:
        await self._get("/accounts", limit=1)

    def _sign_request(self, request: httpx.Request) -> None:
        token = self._signer.token(request.method, self._host, request.url.path)
        request.headers["Authorization"] = f"Bearer {token}"

    async def place_order(self, intent: OrderIntent, client_order_id: str) -> VenueOrder:
        response = await self._send("POST", PREFIX + "/orders", json=wire.order_request(intent, client_order_id))
        if response.status_code != 200:
            raise VenueRejected(
                f"http_{response.status_code}", f"coinbase: {error_text(response)}", order_specific=True
            )
        body = response.json()
        if not body.get("success"):
            error = body.get("error_response") or {}
            reason = str(error.get("new_order_failure_reason") or error.get("preview_failure_reason") or "")
            code = str(error.get("error") or body.get("failure_reason") or reason or "UNKNOWN_FAILURE_REASON")
            why = str(error.get("message") or error.get("error_details") or code)
            raise VenueRejected(code.lower(), f"coinbase: {why}", order_specific=code not in wire.NOT_ORDER_SPECIFIC)
        placed = body.get("success_response") or {}
        if placed.get("product_id") not in (None, intent.symbol) or str(placed.get("side", "")).lower() not in (
            "",
            str(intent.side),
        ):
            raise VenueRejected(
                "client_order_id_reused",
                f"coinbase answered with another order ({placed.get('product_id')} {placed.get('side')}) "
                f"for client order id {client_order_id}",
                order_specific=True,
            )
        order_id = str(placed.get("order_id") or body.get("order_id"))
        order = await read_after_placing(lambda: self.get_order(order_id), "coinbase")
        if order is None:  # accepted, not readable yet: known by its id
            return VenueOrder(order_id, client_order_id, wire.STATUSES["PENDING"], intent.quantity or Decimal(0))
        return order

    async def locate(
        self, intent: OrderIntent, client_order_id: str, since: datetime, exclude: frozenset[str] = frozenset()
    ) -> VenueOrder | None:
        """Recent orders of the product, matched by client order id (Coinbase has no lookup by it)."""
        cursor = ""
        start = (since - LISTING_MARGIN).isoformat().replace("+00:00", "Z")
        while True:
            params: dict[str, Any] = {"product_ids": intent.symbol, "start_date": start, "limit": PAGE}
            if cursor:
                params["cursor"] = cursor
            body = await self._get("/orders/historical/batch", **params) or {}
            for data in body.get("orders") or []:
                if data.get("client_order_id") == client_order_id:
                    return await self._with_fills(data)
            cursor = str(body.get("cursor") or "")
            if not body.get("has_next") or not cursor:
                return None

    async def get_order(self, broker_order_id: str) -> VenueOrder | None:
        body = await self._get(f"/orders/historical/{broker_order_id}")
        data = body.get("order") if isinstance(body, dict) else None
        return await self._with_fills(data) if data else None

    async def cancel_order(self, broker_order_id: str) -> VenueOrder:
        response = await self._send("POST", PREFIX + "/orders/batch_cancel", json={"order_ids": [broker_order_id]})
        body = response.json() if response.status_code == 200 else {}
        results = body.get("results") or [{}]
        order = await self.get_order(broker_order_id)
        if order is None:
            raise VenueRejected("unknown_order", f"coinbase has no order {broker_order_id}", order_specific=True)
        if results[0].get("success"):
            return order
        if order.status.is_terminal:
            raise VenueRejected(
                "too_late_to_cancel", f"order {broker_order_id} is already {order.status}", order_specific=True
            )
        reason = str(results[0].get("failure_reason") or f"http {response.status_code}")
        raise VenueRejected(reason.lower(), f"coinbase did not cancel {broker_order_id}: {reason}", order_specific=True)

    async def get_account(self) -> AccountSnapshot:
        accounts = await self._accounts()
        cash = sum((a[1] for a in accounts if a[0] == "USD"), Decimal(0))
        held = sum((p.market_value for p in await self._positions(accounts)), Decimal(0))
        return AccountSnapshot(account_id="coinbase", cash=cash, buying_power=cash, portfolio_value=cash + held)

    async def get_positions(self) -> list[PositionLine]:
        return await self._positions(await self._accounts())

    async def _accounts(self) -> list[tuple[str, Decimal]]:
        """(currency, balance) of every account, available and on hold."""
        found: list[tuple[str, Decimal]] = []
        cursor = ""
        while True:
            params: dict[str, Any] = {"limit": 250}
            if cursor:
                params["cursor"] = cursor
            body = await self._get("/accounts", **params) or {}
            for account in body.get("accounts") or []:
                total = Decimal(str((account.get("available_balance") or {}).get("value", 0))) + Decimal(
                    str((account.get("hold") or {}).get("value", 0))
                )
                found.append((str(account.get("currency")), total))
            cursor = str(body.get("cursor") or "")
            if not body.get("has_next") or not cursor:
                return found

    async def _positions(self, accounts: list[tuple[str, Decimal]]) -> list[PositionLine]:
        """Crypto holdings, marked at the mid of the best bid and ask. Coinbase keeps balances,
        not cost: the average cost is not known here (0)."""
        held = {f"{currency}-USD": total for currency, total in accounts if currency != "USD" and total != 0}
        if not held:
            return []
        body = await self._get("/best_bid_ask", product_ids=",".join(sorted(held))) or {}
        marks = {
            str(book["product_id"]): (Decimal(str(book["bids"][0]["price"])) + Decimal(str(book["asks"][0]["price"])))
            / 2
            for book in body.get("pricebooks") or []
            if book.get("bids") and book.get("asks")
        }
        return [
            PositionLine(
                symbol=product,
                asset_class=AssetClass.CRYPTO,
                quantity=quantity,
                average_cost=Decimal(0),
                market_price=marks.get(product, Decimal(0)),
                market_value=quantity * marks.get(product, Decimal(0)),
                unrealized_pnl=Decimal(0),
            )
            for product, quantity in sorted(held.items())
        ]

    async def stream_updates(
        self, on_order: Callable[[VenueOrder], Awaitable[None]], on_connect: Callable[[], Awaitable[None]]
    ) -> None:
        """Follow the ``user`` channel (and ``heartbeats``, without which Coinbase closes a quiet
        channel): each order it mentions is read whole over REST and handed on; reconnects with
        backoff, and ``on_connect`` runs after every connection."""

        async def session(ws: ClientConnection, connected: Callable[[], Awaitable[None]]) -> None:
            for channel in ("user", "heartbeats"):
                await ws.send(json.dumps({"type": "subscribe", "channel": channel, "jwt": self._signer.stream_token()}))
            await connected()
            async for frame in ws:
                message = json.loads(frame)
                if message.get("type") == "error":
                    raise StreamRefused(f"coinbase: the stream refused the subscription ({message.get('message')})")
                if message.get("channel") != "user":
                    continue
                for order_id in _order_ids(message):
                    try:
                        order = await self.get_order(order_id)
                    except VenueError as exc:  # unreadable now: the poller settles it
                        log.warning("coinbase order update not read", order_id=order_id, error=str(exc))
                        continue
                    if order is not None:
                        await on_order(order)

        await self._follow(self._stream_url, session, on_connect)

    async def _with_fills(self, data: dict[str, Any]) -> VenueOrder:
        order = wire.parse_order(data)
        if order.filled_quantity > 0:
            order.fills = await self._fills(order.broker_order_id)
        return as_far_as_known(order)

    async def _fills(self, order_id: str) -> list[VenueFill]:
        fills: list[VenueFill] = []
        cursor = ""
        while True:
            params: dict[str, Any] = {"order_ids": order_id, "limit": PAGE, "sort_by": "TRADE_TIME"}
            if cursor:
                params["cursor"] = cursor
            body = await self._get("/orders/historical/fills", **params) or {}
            fills += [wire.parse_fill(f) for f in body.get("fills") or [] if f.get("order_id") == order_id]
            cursor = str(body.get("cursor") or "")
            if not cursor:
                return sorted(fills, key=lambda f: f.executed_at)


def _price(levels: list[dict[str, Any]]) -> Decimal:
    return Decimal(str(levels[0]["price"]))


def _order_ids(message: dict[str, Any]) -> list[str]:
    """The orders a ``user`` channel message mentions, snapshot or update, in order, once each."""
    ids: dict[str, None] = {}
    for event in message.get("events") or []:
        for order in event.get("orders") or []:
            if order.get("order_id"):
                ids[str(order["order_id"])] = None
    return list(ids)
