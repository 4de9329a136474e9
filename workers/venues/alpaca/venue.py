"""Alpaca over its Trading API v2 (REST), with a thin async ``httpx`` client.

Not alpaca-py: its REST client is synchronous ``requests`` with no timeout, and it resends every
request, POST ``/v2/orders`` included, after a 429 or 504 by itself. Here a request is sent once;
what happens after a failure is the executor's decision (look up by client order id, never send
blindly again).

The client order id is the intent id. Alpaca refuses a repeated one with
``422 {"code": 40010001}`` (``VenueDuplicate``: the executor looks the order up) and finds an
order by it at ``GET /v2/orders:by_client_order_id``. An order's executions come from the
account's ``FILL`` activities.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import structlog
from websockets.asyncio.client import ClientConnection

from contracts import AccountSnapshot, BrokerName, OrderIntent, PositionLine
from workers.domain.venue import (
    VenueDuplicate,
    VenueError,
    VenueFill,
    VenueOrder,
    VenueRejected,
)
from workers.venues.alpaca import wire
from workers.venues.http import error_text
from workers.venues.http_venue import HttpVenue, StreamRefused, as_far_as_known, read_after_placing

log = structlog.get_logger("mbx.alpaca")

PAPER_URL = "https://paper-api.alpaca.markets"
LIVE_URL = "https://api.alpaca.markets"
DUPLICATE_CLIENT_ID = 40010001
FILL_PAGE = 100
FILLS_REMEMBERED = 10_000
"""Orders whose executions an Alpaca venue keeps from the activities it has read."""


class AlpacaVenue(HttpVenue):
    """The ``Venue`` protocol at Alpaca. ``transport`` replaces the network (tests)."""

    broker = BrokerName.ALPACA
    renew_hint = "ALPACA_API_KEY / ALPACA_SECRET_KEY"

    def __init__(
        self,
        key_id: str,
        secret_key: str,
        *,
        base_url: str = PAPER_URL,
        stream_url: str | None = None,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        # The keys live only in these headers: never in a message, a log line or an error text.
        headers = {"APCA-API-KEY-ID": key_id, "APCA-API-SECRET-KEY": secret_key}
        super().__init__(base_url, timeout_s, headers=headers, transport=transport)
        self._stream_url = stream_url or "ws" + self._base_url.removeprefix("http") + "/stream"
        self._key_id, self._secret_key = key_id, secret_key
        self._fills_seen: dict[str, list[VenueFill]] = {}  # by order id, least recently touched first
        self._fill_cursor: str | None = None  # the newest activity read in order
        self._fill_reading = asyncio.Lock()

    async def _probe(self) -> None:
        await self._get("/v2/account")

    async def place_order(self, intent: OrderIntent, client_order_id: str) -> VenueOrder:
        response = await self._send("POST", "/v2/orders", json=wire.order_request(intent, client_order_id))
        if response.status_code in (200, 201):
            placed = response.json()
            return await read_after_placing(lambda: self._with_fills(placed), "alpaca")
        reason = error_text(response)
        code = _code(response)
        if response.status_code == 422 and code == DUPLICATE_CLIENT_ID:
            raise VenueDuplicate(f"alpaca: client_order_id {client_order_id} must be unique")
        if response.status_code == 403:
            # Alpaca's 403 to an order: "buying power or shares is not sufficient".
            raise VenueRejected("insufficient_buying_power", f"alpaca: {reason}", order_specific=False)
        if response.status_code in (404, 422):
            raise VenueRejected("invalid_order", f"alpaca: {reason}", order_specific=True)
        raise VenueRejected(f"http_{response.status_code}", f"alpaca: {reason}", order_specific=False)

    async def locate(
        self, intent: OrderIntent, client_order_id: str, since: datetime, exclude: frozenset[str] = frozenset()
    ) -> VenueOrder | None:
        data = await self._get("/v2/orders:by_client_order_id", client_order_id=client_order_id)
        return await self._with_fills(data) if data else None

    async def get_order(self, broker_order_id: str) -> VenueOrder | None:
        data = await self._get(f"/v2/orders/{broker_order_id}")
        return await self._with_fills(data) if data else None

    async def cancel_order(self, broker_order_id: str) -> VenueOrder:
        response = await self._send("DELETE", f"/v2/orders/{broker_order_id}")
        if response.status_code == 404:
            raise VenueRejected("unknown_order", f"alpaca has no order {broker_order_id}", order_specific=True)
        order = await self.get_order(broker_order_id)
        if order is None:
            raise VenueRejected("unknown_order", f"alpaca has no order {broker_order_id}", order_specific=True)
        if response.status_code == 422:  # no longer cancelable
            raise VenueRejected(
                "too_late_to_cancel", f"order {broker_order_id} is already {order.status}", order_specific=True
            )
        if response.status_code not in (200, 204):
            raise VenueRejected(f"http_{response.status_code}", f"alpaca: {error_text(response)}", order_specific=True)
        return order

    async def get_account(self) -> AccountSnapshot:
        return wire.parse_account(await self._get("/v2/account"))

    async def get_positions(self) -> list[PositionLine]:
        return [wire.parse_position(p) for p in await self._get("/v2/positions") or []]

    async def _with_fills(self, data: dict[str, Any]) -> VenueOrder:
        """The order with its executions: the account's fill activities for it, oldest first."""
        order = wire.parse_order(data)
        if order.filled_quantity > 0:
            order.fills = await self._fills(order)
        return as_far_as_known(order)

    async def _fills(self, order: VenueOrder) -> list[VenueFill]:
        """The order's executions, oldest first. The account's activities are read once for
        every order, onwards from the last one read: a burst of fills (a stream frame per fill)
        costs a read per new page, not a scan per frame, which made mbx's own requests crowd
        Alpaca's 200-a-minute limit. An order whose executions are not all found that way (it
        filled before this venue began reading, or an activity showed late) is read from its
        own submission on, as before."""
        oid = order.broker_order_id
        async with self._fill_reading:
            if _total(self._fills_seen.get(oid)) < order.filled_quantity and self._fill_cursor is not None:
                await self._read_activities(token=self._fill_cursor)
            if _total(self._fills_seen.get(oid)) < order.filled_quantity:
                after = (order.submitted_at - timedelta(seconds=1)).isoformat() if order.submitted_at else None
                self._fills_seen.pop(oid, None)  # replaced by the complete list read now
                await self._read_activities(after=after, only=None if self._fill_cursor is None else oid)
            return list(self._fills_seen.get(oid, []))

    async def _read_activities(
        self, *, token: str | None = None, after: str | None = None, only: str | None = None
    ) -> None:
        """Read ``FILL`` activities oldest first, from ``token`` (an activity id) or ``after`` (a
        time) to the newest, and remember each order's executions (only ``only``'s when given:
        a scan of the past that must not move the cursor back)."""
        while True:
            params: dict[str, Any] = {"direction": "asc", "page_size": FILL_PAGE}
            if after:
                params["after"] = after
            if token:
                params["page_token"] = token
            page = await self._get("/v2/account/activities/FILL", **params) or []
            for activity in page:
                oid = str(activity.get("order_id"))
                if only is None or oid == only:
                    self._remember_fill(oid, wire.parse_fill(activity))
            if page and only is None:
                self._fill_cursor = str(page[-1]["id"])
            if len(page) < FILL_PAGE:
                return
            token = str(page[-1]["id"])

    def _remember_fill(self, order_id: str, fill: VenueFill) -> None:
        fills = self._fills_seen.pop(order_id, [])
        if all(f.fill_id != fill.fill_id for f in fills):
            fills.append(fill)
        self._fills_seen[order_id] = fills  # most recently touched last
        while len(self._fills_seen) > FILLS_REMEMBERED:
            del self._fills_seen[next(iter(self._fills_seen))]

    async def stream_updates(
        self, on_order: Callable[[VenueOrder], Awaitable[None]], on_connect: Callable[[], Awaitable[None]]
    ) -> None:
        """Follow ``trade_updates``: authenticate, listen, hand each changed order on (its fills
        read over REST, so they are complete and keep their ids), and reconnect with backoff
        when the stream drops. One connection per account: Alpaca allows no more."""

        async def session(ws: ClientConnection, connected: Callable[[], Awaitable[None]]) -> None:
            await self._subscribe(ws)
            await connected()
            async for frame in ws:
                order = self._order_of(frame)
                if order is None:
                    continue
                try:
                    whole = await self._with_fills(order)
                except VenueError as exc:  # its fills unreadable now: the poller settles it
                    log.warning("alpaca order update not read", order_id=order.get("id"), error=str(exc))
                    continue
                await on_order(whole)

        await self._follow(self._stream_url, session, on_connect)

    async def _subscribe(self, ws: ClientConnection) -> None:
        auth = {"action": "authenticate", "data": {"key_id": self._key_id, "secret_key": self._secret_key}}
        await ws.send(json.dumps(auth))
        answer = _frame(await asyncio.wait_for(ws.recv(), self._timeout_s))
        if answer.get("stream") != "authorization" or answer.get("data", {}).get("status") != "authorized":
            raise StreamRefused(f"alpaca: the stream refused the credentials ({answer.get('data', {}).get('status')})")
        await ws.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))

    @staticmethod
    def _order_of(frame: str | bytes) -> dict[str, Any] | None:
        message = _frame(frame)
        if message.get("stream") != "trade_updates":
            return None
        order = message.get("data", {}).get("order")
        return order if isinstance(order, dict) else None


def _total(fills: list[VenueFill] | None) -> Decimal:
    return sum((f.quantity for f in fills or ()), Decimal(0))


def _frame(raw: str | bytes) -> dict[str, Any]:
    """One stream message; paper accounts send JSON in binary frames."""
    data = json.loads(raw)
    return data if isinstance(data, dict) else {}


def _code(response: httpx.Response) -> int | None:
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return int(code) if isinstance(code, int) else None
