"""A stateful fake of Robinhood's Crypto Trading API, for the adapter's tests: no network.

Every request must carry ``x-api-key``, a fresh ``x-timestamp`` and an ``x-signature`` that the
test key pair's public key verifies over api key + timestamp + path (with its query) + method +
body: anything else is a 401. A client order id must be a UUID; a repeated one returns the
original order. Market orders fill at once at the simulator's quote; a limit order rests until
``trade`` fills it. Listing filters by symbol and creation time and pages with ``next``. The
fault switches are the other fakes' (``FakeFaults``; no ``pending_new``: the API shows none).
With a ``bucket``, the account keeps Robinhood's documented limit (100 requests a minute,
bursts to 300, a token bucket): a request past it gets a 429 "Request was throttled. Expected
available in N seconds." with ``Retry-After: N`` (the header is not documented; mbx reads it).
"""

from __future__ import annotations

import base64
import copy
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.fakes.alpaca import FakeFaults
from tests.fakes.rate_window import TokenBucket
from workers.venues.simulated.quotes import QuoteModel

GOLDEN = Path(__file__).parent / "golden" / "robinhood"
PREFIX = "/api/v1/crypto"
PAGE = 2
"""Small, so the adapter's paging is exercised."""
MAX_SKEW_S = 30


def golden(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text())
    return data


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def new_key_pair() -> tuple[str, ed25519.Ed25519PublicKey]:
    """A base64 Ed25519 private key (as Robinhood's key generator gives it) and its public key."""
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return base64.b64encode(raw).decode(), key.public_key()


@dataclass
class FakeRobinhood:
    api_key: str = "rh-api-fake-0000"
    private_key: str = ""
    public_key: Any = None
    buying_power: Decimal = Decimal(10**9)
    quotes: QuoteModel = field(default_factory=QuoteModel)
    faults: FakeFaults = field(default_factory=FakeFaults)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_client_id: dict[str, str] = field(default_factory=dict)
    holdings: dict[str, Decimal] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    bucket: TokenBucket | None = None
    """The account's rate limit (100 a minute, bursts to 300)."""

    def __post_init__(self) -> None:
        if not self.private_key:
            self.private_key, self.public_key = new_key_pair()

    def switch_faults(self, changes: dict[str, Any]) -> dict[str, Any]:
        return self.faults.switch(changes)

    def handle(self, request: httpx.Request) -> httpx.Response:
        reset = self.faults.network(request)
        if reset is None and self.bucket is not None and not self.bucket.admit():
            reset = math.ceil(time.time() + self.bucket.reset_in())
        if reset is not None:
            wait = max(reset - math.floor(time.time()), 1)
            return httpx.Response(
                429,
                json={"detail": f"Request was throttled. Expected available in {wait} seconds."},
                headers={"retry-after": str(wait)},
            )
        if self.faults.server_error():
            return httpx.Response(503, json={"type": "server_error", "errors": [{"detail": "Service unavailable"}]})
        return self.faults.slow(self._answer(request))

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if self.faults.auth_expired or not self._signed(request):
            return httpx.Response(401, json={"type": "client_error", "errors": [{"detail": "Invalid signature"}]})
        path, method = request.url.path.removeprefix(PREFIX), request.method
        self.requests.append((method, path))
        if path == "/trading/orders/" and method == "POST":
            response = self._place(json.loads(request.content))
            if response.status_code == 201 and self.faults.timeouts_after_accept > 0:
                self.faults.timeouts_after_accept -= 1
                raise httpx.ReadTimeout("the reply was lost", request=request)
            if response.status_code == 201 and self.faults.error_after_accept():
                return httpx.Response(500, json={"type": "server_error", "errors": [{"detail": "Internal error"}]})
            return response
        if path == "/trading/orders/" and method == "GET":
            return self._list(request.url.params)
        if path.startswith("/trading/orders/"):
            parts = path.removeprefix("/trading/orders/").strip("/").split("/")
            order = self.orders.get(parts[0])
            if order is None:
                return httpx.Response(404, json={"type": "client_error", "errors": [{"detail": "Not found."}]})
            if method == "GET" and len(parts) == 1:
                return httpx.Response(200, json=order)
            if method == "POST" and parts[1:] == ["cancel"]:
                if order["state"] not in ("open", "partially_filled"):
                    return httpx.Response(
                        400, json={"type": "validation_error", "errors": [{"detail": "Order is not cancelable"}]}
                    )
                order.update(state="canceled", updated_at=_now())
                return httpx.Response(200, text="Cancel request was submitted.")
        if path == "/trading/accounts/" and method == "GET":
            account = golden("account") | {"buying_power": str(self.buying_power)}
            return httpx.Response(200, json=account)
        if path == "/trading/holdings/" and method == "GET":
            return httpx.Response(200, json={"next": None, "previous": None, "results": self._holdings()})
        if path == "/marketdata/best_bid_ask/" and method == "GET":
            return httpx.Response(200, json={"results": [self._book(s) for s in request.url.params.get_list("symbol")]})
        return httpx.Response(404, json={"type": "client_error", "errors": [{"detail": f"no route {method} {path}"}]})

    def _signed(self, request: httpx.Request) -> bool:
        key, stamp, signature = (request.headers.get(h, "") for h in ("x-api-key", "x-timestamp", "x-signature"))
        if key != self.api_key or not stamp.isdigit() or abs(int(stamp) - time.time()) > MAX_SKEW_S:
            return False
        body = request.content.decode() if request.content else ""
        message = f"{key}{stamp}{request.url.raw_path.decode()}{request.method}{body}"
        try:
            self.public_key.verify(base64.b64decode(signature), message.encode())
        except (InvalidSignature, ValueError):
            return False
        return True

    def _place(self, body: dict[str, Any]) -> httpx.Response:
        try:
            cid = str(uuid.UUID(str(body.get("client_order_id"))))
        except ValueError:
            return _invalid("client_order_id", "Must be a valid UUID.")
        if cid in self.by_client_id:
            return httpx.Response(201, json=self.orders[self.by_client_id[cid]])
        if self.faults.reject_next > 0:
            self.faults.reject_next -= 1
            return _invalid("non_field_errors", "Insufficient buying power.")
        symbol = str(body["symbol"])
        if symbol in self.faults.unknown_symbols:
            return _invalid("symbol", "Invalid symbol.")
        config = body.get("limit_order_config") or body.get("market_order_config") or {}
        quote = self.quotes.quote(symbol)
        touch = quote.ask if body["side"] == "buy" else quote.bid
        size = (
            Decimal(config["asset_quantity"]) if "asset_quantity" in config else Decimal(config["quote_amount"]) / touch
        )
        limit = Decimal(config["limit_price"]) if "limit_price" in config else None
        if body["side"] == "buy" and size * (limit or touch) > self.buying_power:
            return _invalid("non_field_errors", "Insufficient buying power.")
        order = copy.deepcopy(golden("order"))
        order.update(
            id=str(uuid.uuid4()),
            client_order_id=cid,
            side=body["side"],
            type=body["type"],
            symbol=symbol,
            state="open",
            executions=[],
            average_price=None,
            filled_asset_quantity="0",
            created_at=_now(),
            updated_at=_now(),
        )
        order.pop("limit_order_config", None)
        order.pop("market_order_config", None)
        order["limit_order_config" if body["type"] == "limit" else "market_order_config"] = {
            **config,
            "asset_quantity": str(size),
        }
        self.orders[order["id"]] = order
        self.by_client_id[cid] = order["id"]
        if limit is None or (limit >= touch if body["side"] == "buy" else limit <= touch):
            for lot in self.faults.lots(size):
                self._execute(order, lot, touch)
        return httpx.Response(201, json=order)

    def trade(self, order_id: str, qty: Decimal | None = None) -> dict[str, Any]:
        order = self.orders[order_id]
        config = order["limit_order_config"]
        left = Decimal(config["asset_quantity"]) - Decimal(order["filled_asset_quantity"])
        self._execute(order, qty if qty is not None else left, Decimal(config["limit_price"]))
        return order

    def _execute(self, order: dict[str, Any], size: Decimal, price: Decimal) -> None:
        filled = Decimal(order["filled_asset_quantity"])
        total = filled + size
        average = Decimal(order["average_price"] or 0)
        config = order.get("limit_order_config") or order.get("market_order_config") or {}
        order["executions"].append({"effective_price": str(price), "quantity": str(size), "timestamp": _now()})
        order.update(
            filled_asset_quantity=str(total),
            average_price=str(((average * filled + price * size) / total).quantize(Decimal("0.01"))),
            state="filled" if total >= Decimal(config["asset_quantity"]) else "partially_filled",
            updated_at=_now(),
        )
        signed = size if order["side"] == "buy" else -size
        self.buying_power -= signed * price
        code = order["symbol"].split("-")[0]
        self.holdings[code] = self.holdings.get(code, Decimal(0)) + signed

    def _list(self, params: httpx.QueryParams) -> httpx.Response:
        if self.faults.hidden_lookups > 0:
            self.faults.hidden_lookups -= 1
            return httpx.Response(200, json={"next": None, "previous": None, "results": []})
        start = _time(params["created_at_start"]) if params.get("created_at_start") else None
        found = [
            o
            for o in self.orders.values()
            if (not params.get("symbol") or o["symbol"] == params["symbol"])
            and (start is None or _time(o["created_at"]) >= start)
        ]
        offset = int(params.get("cursor") or 0)
        page = found[offset : offset + PAGE]
        following = None
        if offset + PAGE < len(found):
            query = httpx.QueryParams(
                {k: v for k, v in params.items() if k != "cursor"} | {"cursor": str(offset + PAGE)}
            )
            following = f"https://trading.robinhood.com{PREFIX}/trading/orders/?{query}"
        return httpx.Response(200, json={"next": following, "previous": None, "results": page})

    def _holdings(self) -> list[dict[str, Any]]:
        return [
            golden("holding") | {"asset_code": code, "total_quantity": str(q), "quantity_available_for_trading": str(q)}
            for code, q in sorted(self.holdings.items())
            if q != 0
        ]

    def _book(self, symbol: str) -> dict[str, Any]:
        quote = self.quotes.quote(symbol)
        return golden("best_bid_ask") | {
            "symbol": symbol,
            "price": str(quote.mid),
            "bid_inclusive_of_sell_spread": str(quote.bid),
            "ask_inclusive_of_buy_spread": str(quote.ask),
            "timestamp": _now(),
        }


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _invalid(attr: str, detail: str) -> httpx.Response:
    return httpx.Response(400, json={"type": "validation_error", "errors": [{"attr": attr, "detail": detail}]})
