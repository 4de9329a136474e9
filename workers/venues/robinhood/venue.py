"""Robinhood's Crypto Trading API (the official one: crypto only; Robinhood equities have no
official API), with a thin async ``httpx`` client and an Ed25519 signature on every request.

Robinhood wants a UUID as client order id: the adapter sends ``uuid5(intent id)``, the same on
every attempt, so a resubmission carries the same id; an order is found by listing the orders
created since the intent's decision and matching that id (the list has no client-id filter).
Robinhood pushes nothing: working orders are polled. Executions carry no ids: an order's n-th
execution is ``<order id>-<n>``, stable because the list only grows. There is no paper
environment: this adapter trades real money (``mbx up --live``).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from contracts import AccountSnapshot, AssetClass, BrokerName, OrderIntent, OrderStatus, OrderType, PositionLine
from workers.domain.capabilities import CAPABILITIES as BROKERS
from workers.domain.capabilities import VenueCapabilities
from workers.domain.venue import VenueAuthFailed, VenueFill, VenueOrder, VenueRejected, cancellable
from workers.venues.http import error_text, parse_time
from workers.venues.http_venue import HttpVenue

BASE_URL = "https://trading.robinhood.com"
ORDERS = "/api/v1/crypto/trading/orders/"
CLIENT_ID_NAMESPACE = uuid.UUID("6f1d7c1e-2b1a-4f5e-9a53-6d6278780001")
"""Fixed: the same intent always gets the same client order id."""
LISTING_MARGIN = timedelta(seconds=5)

CAPABILITIES = VenueCapabilities(
    BrokerName.ROBINHOOD,
    {AssetClass.CRYPTO: BROKERS[BrokerName.ROBINHOOD].assets[AssetClass.CRYPTO]},
    has_client_order_id=True,
    rate_windows=((100, 60.0),),  # 100 a minute, bursts to 300 (docs, "Rate Limiting"): the sustained one
)
"""What this adapter trades: crypto only (``brokers.robinhood.assets`` is set to match)."""

STATES: dict[str, OrderStatus] = {
    "open": OrderStatus.ACCEPTED,
    "partially_filled": OrderStatus.PARTIALLY_FILLED,
    "filled": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELLED,
    "failed": OrderStatus.REJECTED,
}


def client_order_id(intent_id: str) -> str:
    return str(uuid.uuid5(CLIENT_ID_NAMESPACE, intent_id))


class Signer:
    """``x-signature``: base64 of the Ed25519 signature of api key + timestamp + path (with its
    query) + method + the body exactly as sent."""

    def __init__(self, api_key: str, private_key_b64: str) -> None:
        try:
            seed = base64.b64decode("".join(private_key_b64.split()), validate=True)
            if len(seed) not in (32, 64):
                raise ValueError("an Ed25519 key is 32 or 64 bytes")
            self._key = ed25519.Ed25519PrivateKey.from_private_bytes(seed[:32])
        except (ValueError, binascii.Error):
            raise VenueAuthFailed("robinhood: the private key is not a base64 Ed25519 key") from None
        self._api_key = api_key

    def public_key_b64(self) -> str:
        """The public half, as Robinhood's credentials page asks for it (base64 of the raw 32 bytes)."""
        raw = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def message(self, timestamp: int, path: str, method: str, body: str) -> str:
        return f"{self._api_key}{timestamp}{path}{method}{body}"

    def headers(self, path: str, method: str, body: str, now: float | None = None) -> dict[str, str]:
        timestamp = int(time.time() if now is None else now)
        signature = self._key.sign(self.message(timestamp, path, method, body).encode())
        return {
            "x-api-key": self._api_key,
            "x-timestamp": str(timestamp),
            "x-signature": base64.b64encode(signature).decode(),
        }


class RobinhoodCryptoVenue(HttpVenue):
    broker = BrokerName.ROBINHOOD
    renew_hint = "ROBINHOOD_API_KEY / ROBINHOOD_PRIVATE_KEY"

    def __init__(
        self,
        api_key: str,
        private_key_b64: str,
        *,
        base_url: str = BASE_URL,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, timeout_s, sign=self._sign_request, transport=transport)
        self._signer = Signer(api_key, private_key_b64)

    @property
    def capabilities(self) -> VenueCapabilities:
        return CAPABILITIES

    def _sign_request(self, request: httpx.Request) -> None:
        target = request.url.raw_path.decode()
        body = request.content.decode() if request.content else ""
        request.headers.update(self._signer.headers(target, request.method, body))

    async def _probe(self) -> None:
        await self._get("/api/v1/crypto/trading/accounts/")

    async def place_order(self, intent: OrderIntent, client_order_id_: str) -> VenueOrder:
        if intent.asset_class is not AssetClass.CRYPTO:
            raise VenueRejected(
                "unsupported_asset", f"robinhood's crypto API does not trade {intent.asset_class}", order_specific=False
            )
        response = await self._send("POST", ORDERS, content=json.dumps(order_request(intent, client_order_id_)))
        if response.status_code in (200, 201):
            return self._as_placed(response.json(), client_order_id_)
        why = error_text(response)
        if response.status_code in (400, 422):
            money = "buying power" in why.lower() or "insufficient" in why.lower()
            raise VenueRejected(
                "insufficient_buying_power" if money else "invalid_order", f"robinhood: {why}", order_specific=not money
            )
        raise VenueRejected(f"http_{response.status_code}", f"robinhood: {why}", order_specific=True)

    async def locate(
        self, intent: OrderIntent, client_order_id_: str, since: datetime, exclude: frozenset[str] = frozenset()
    ) -> VenueOrder | None:
        wanted = client_order_id(client_order_id_)
        path = ORDERS
        params: dict[str, Any] | None = {
            "symbol": intent.symbol,
            "created_at_start": (since - LISTING_MARGIN).isoformat().replace("+00:00", "Z"),
        }
        while True:
            body = await self._get(path, **(params or {})) or {}
            for data in body.get("results") or []:
                if data.get("client_order_id") == wanted:
                    return self._as_placed(data, client_order_id_)
            following = body.get("next")
            if not following:
                return None
            parts = urlsplit(str(following))
            path, params = f"{parts.path}?{parts.query}" if parts.query else parts.path, None

    async def get_order(self, broker_order_id: str) -> VenueOrder | None:
        data = await self._get(f"{ORDERS}{broker_order_id}/")
        return parse_order(data) if data else None

    async def cancel_order(self, broker_order_id: str) -> VenueOrder:
        order = cancellable(await self.get_order(broker_order_id), "robinhood", broker_order_id)
        response = await self._send("POST", f"{ORDERS}{broker_order_id}/cancel/", content="")
        after = await self.get_order(broker_order_id) or order
        if response.status_code not in (200, 201, 202) and not after.status.is_terminal:
            why = error_text(response)
            raise VenueRejected(f"http_{response.status_code}", f"robinhood: {why}", order_specific=True)
        if response.status_code not in (200, 201, 202):
            raise VenueRejected(
                "too_late_to_cancel", f"order {broker_order_id} is already {after.status}", order_specific=True
            )
        return after

    async def get_account(self) -> AccountSnapshot:
        account = await self._get("/api/v1/crypto/trading/accounts/") or {}
        cash = Decimal(str(account.get("buying_power") or 0))
        held = sum((p.market_value for p in await self.get_positions()), Decimal(0))
        return AccountSnapshot(
            account_id=str(account.get("account_number") or "robinhood"),
            currency=str(account.get("buying_power_currency") or "USD"),
            cash=cash,
            buying_power=cash,
            portfolio_value=cash + held,
        )

    async def get_positions(self) -> list[PositionLine]:
        """Crypto holdings, marked at the mid of Robinhood's best bid and ask. The holdings carry
        no cost: the average cost is not known here (0)."""
        body = await self._get("/api/v1/crypto/trading/holdings/") or {}
        held = {
            f"{h['asset_code']}-USD": Decimal(str(h.get("total_quantity") or 0))
            for h in body.get("results") or []
            if Decimal(str(h.get("total_quantity") or 0)) != 0
        }
        lines = []
        for symbol, quantity in sorted(held.items()):
            book = await self._get("/api/v1/crypto/marketdata/best_bid_ask/", symbol=symbol) or {}
            quotes = body_results(book)
            mark = Decimal(str(quotes[0].get("price") or 0)) if quotes else Decimal(0)
            lines.append(
                PositionLine(
                    symbol=symbol,
                    asset_class=AssetClass.CRYPTO,
                    quantity=quantity,
                    average_cost=Decimal(0),
                    market_price=mark,
                    market_value=quantity * mark,
                    unrealized_pnl=Decimal(0),
                )
            )
        return lines

    @staticmethod
    def _as_placed(data: dict[str, Any], intent_id: str) -> VenueOrder:
        """The order, under the client order id mbx knows it by (Robinhood holds its UUID form)."""
        order = parse_order(data)
        order.client_order_id = intent_id
        return order


def body_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    results = body.get("results")
    return list(results) if isinstance(results, list) else []


def order_request(intent: OrderIntent, client_order_id_: str) -> dict[str, Any]:
    size = (
        {"asset_quantity": str(intent.quantity)}
        if intent.quantity is not None
        else {"quote_amount": str(intent.notional)}
    )
    body: dict[str, Any] = {
        "client_order_id": client_order_id(client_order_id_),
        "side": str(intent.side),
        "type": str(intent.order_type),
        "symbol": intent.symbol,
    }
    if intent.order_type is OrderType.LIMIT:
        body["limit_order_config"] = {**size, "limit_price": str(intent.limit_price), "time_in_force": "gtc"}
    else:
        body["market_order_config"] = size
    return body


def parse_order(data: dict[str, Any]) -> VenueOrder:
    config = data.get("limit_order_config") or data.get("market_order_config") or {}
    executions = data.get("executions") or []
    fills = [
        VenueFill(
            fill_id=f"{data['id']}-{n}",
            quantity=Decimal(str(e["quantity"])),
            price=Decimal(str(e["effective_price"])),
            fee=Decimal(0),  # the spread is the fee at Robinhood's market-maker routing
            executed_at=parse_time(e.get("timestamp")) or datetime.fromtimestamp(0).astimezone(),
        )
        for n, e in enumerate(executions, start=1)
    ]
    filled = Decimal(str(data.get("filled_asset_quantity") or 0))
    size = config.get("asset_quantity")
    status = STATES.get(str(data.get("state")), OrderStatus.ACCEPTED)
    if status is OrderStatus.ACCEPTED and filled > 0:  # working, partly filled: the fills stay counted
        status = OrderStatus.PARTIALLY_FILLED
    return VenueOrder(
        broker_order_id=str(data["id"]),
        client_order_id=str(data.get("client_order_id") or ""),
        status=status,
        quantity=Decimal(str(size)) if size else filled,
        symbol=str(data.get("symbol") or ""),
        side=str(data.get("side") or ""),
        asset_class=str(AssetClass.CRYPTO),
        limit_price=Decimal(str(config["limit_price"])) if config.get("limit_price") else None,
        submitted_at=parse_time(data.get("created_at")),
        filled_quantity=filled,
        average_price=Decimal(str(data["average_price"])) if data.get("average_price") and filled > 0 else None,
        fills=fills,
    )
