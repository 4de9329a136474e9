"""A stateful fake of Coinbase Advanced Trade's REST API, for the adapter's tests: no network.

Every request must carry a JWT signed by the test key pair, naming this request
(``uri = "METHOD host/path"``), unexpired: anything else is a 401. A repeated client order id
returns the original order with ``success: true`` (Coinbase's documented behaviour); business
failures are HTTP 200 with ``success: false``. Market orders fill at once at the simulator's
quote, paying the taker fee (1.2%, the entry tier); a limit order rests until ``trade`` fills it
at its price, paying the maker fee (0.6%). Responses follow the shapes of ``golden/coinbase/``.
Fault switches as the Alpaca fake: ``outage``, ``timeouts_after_accept``, ``reject_next``,
``hidden_lookups``, ``rate_limited_next``, ``auth_expired``, and the bad day's (5xx before and
after accepting, slow replies, closed idle connections, the stream down, ``pending_new_next``:
a resting order shows ``PENDING`` for ``pending_new_s`` before it is ``OPEN``). With a
``bucket``, the private endpoints keep Coinbase's documented limit (30 requests a second per
user, continuously refilled): a request past it gets a 429 whose ``x-ratelimit-reset`` is the
UNIX time the next one would be admitted.
"""

from __future__ import annotations

import copy
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.fakes.alpaca import FakeFaults
from tests.fakes.rate_window import TokenBucket
from workers.venues.simulated.quotes import QuoteModel

GOLDEN = Path(__file__).parent / "golden" / "coinbase"
PREFIX = "/api/v3/brokerage"
TAKER, MAKER = Decimal("0.012"), Decimal("0.006")


def golden(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text())
    return data


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def new_key_pair() -> tuple[str, Any]:
    """A PEM EC P-256 private key (what a CDP key's secret holds) and its public key."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, key.public_key()


@dataclass
class FakeCoinbase:
    key_name: str = "organizations/fake-org/apiKeys/fake-key"
    private_key: str = ""
    public_key: Any = None
    cash: Decimal = Decimal(10**9)
    quotes: QuoteModel = field(default_factory=QuoteModel)
    faults: FakeFaults = field(default_factory=FakeFaults)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_client_id: dict[str, str] = field(default_factory=dict)
    fills: list[dict[str, Any]] = field(default_factory=list)
    holdings: dict[str, Decimal] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    listeners: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    """Called with an order each time it changes (the ``user`` channel server registers here)."""
    bucket: TokenBucket | None = None
    """The private endpoints' rate limit (30 a second per user)."""
    pending_until: dict[str, float] = field(default_factory=dict)

    def _changed(self, order: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            listener(order)

    def __post_init__(self) -> None:
        if not self.private_key:
            self.private_key, self.public_key = new_key_pair()

    def switch_faults(self, changes: dict[str, Any]) -> dict[str, Any]:
        return self.faults.switch(changes)

    # The wire ------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        reset = self.faults.network(request)
        public = request.url.path.startswith(PREFIX + "/market/")
        if reset is None and self.bucket is not None and not public and not self.bucket.admit():
            reset = math.ceil(time.time() + self.bucket.reset_in())
        if reset is not None:
            return httpx.Response(429, json={"error": "rate_limit_exceeded"}, headers={"x-ratelimit-reset": str(reset)})
        self._open_pending()
        if self.faults.server_error():
            return httpx.Response(503, json={"error": "unavailable", "message": "service unavailable"})
        return self.faults.slow(self._answer(request))

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if self.faults.read_fails(request):
            return httpx.Response(503, json={"error": "unavailable", "message": "service unavailable"})
        path, method = request.url.path.removeprefix(PREFIX), request.method
        if path.startswith("/market/products/") and path.endswith("/ticker") and method == "GET":
            self.requests.append((method, path))
            return self._ticker(path.split("/")[3])  # public: no token needed
        if self.faults.auth_expired or not self._signed(request):
            return httpx.Response(401, json={"error": "unauthorized", "message": "Unauthorized"})
        self.requests.append((method, path))
        if path == "/orders" and method == "POST":
            response = self._place(json.loads(request.content))
            if json.loads(response.content).get("success"):
                self.faults.placed()
            if json.loads(response.content).get("success") and self.faults.timeouts_after_accept > 0:
                self.faults.timeouts_after_accept -= 1
                raise httpx.ReadTimeout("the reply was lost", request=request)
            if json.loads(response.content).get("success") and self.faults.error_after_accept():
                return httpx.Response(500, json={"error": "INTERNAL", "message": "internal error"})
            return response
        if path == "/orders/batch_cancel" and method == "POST":
            return self._cancel(json.loads(request.content)["order_ids"])
        if path == "/orders/historical/batch" and method == "GET":
            return self._list(request.url.params)
        if path == "/orders/historical/fills" and method == "GET":
            ids = set(request.url.params.get_list("order_ids"))
            fills = self.faults.lag([f for f in self.fills if f["order_id"] in ids])
            return httpx.Response(200, json={"fills": fills, "cursor": ""})
        if path.startswith("/orders/historical/") and method == "GET":
            order = self.orders.get(path.rsplit("/", 1)[1])
            if order is None:
                return httpx.Response(
                    404, json={"error": "NOT_FOUND", "message": "order with this orderID was not found"}
                )
            return httpx.Response(200, json={"order": order})
        if path == "/accounts" and method == "GET":
            return httpx.Response(200, json=self._accounts())
        if path == "/best_bid_ask" and method == "GET":
            return httpx.Response(200, json=self._books(request.url.params.get("product_ids", "").split(",")))
        return httpx.Response(404, json={"error": "NOT_FOUND", "message": f"no route {method} {path}"})

    def _signed(self, request: httpx.Request) -> bool:
        """A valid JWT of the test key, unexpired, naming this very request."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        try:
            claims = jwt.decode(header[7:], self.public_key, algorithms=["ES256"])
        except jwt.PyJWTError:
            return False
        expected = f"{request.method} {request.url.netloc.decode()}{request.url.path}"
        return bool(claims.get("sub") == self.key_name and claims.get("uri") == expected)

    def _place(self, body: dict[str, Any]) -> httpx.Response:
        cid = str(body["client_order_id"])
        if cid in self.by_client_id:  # the original order, not a new one
            original = self.orders[self.by_client_id[cid]]
            return self._created(original)
        if self.faults.reject_next > 0:
            self.faults.reject_next -= 1
            return self._failed("INSUFFICIENT_FUND", "Insufficient balance in source account")
        product = str(body["product_id"])
        if product in self.faults.unknown_symbols:
            return self._failed("UNKNOWN_PRODUCT_ID", f"product {product} is not listed")
        kind, configured = next(iter(body["order_configuration"].items()))
        quote = self.quotes.quote(product)
        side = str(body["side"])
        touch = quote.ask if side == "BUY" else quote.bid
        base = (
            Decimal(configured["base_size"]) if "base_size" in configured else Decimal(configured["quote_size"]) / touch
        )
        limit = Decimal(configured["limit_price"]) if "limit_price" in configured else None
        if side == "BUY" and base * (limit or touch) > self.cash:
            return self._failed("INSUFFICIENT_FUND", "Insufficient balance in source account")
        order = copy.deepcopy(golden("order"))
        order.update(
            order_id=str(uuid.uuid4()),
            client_order_id=cid,
            product_id=product,
            side=side,
            order_configuration={kind: configured},
            order_type="MARKET" if kind.startswith("market") else "LIMIT",
            time_in_force="IMMEDIATE_OR_CANCEL" if kind.startswith("market") else "GOOD_UNTIL_CANCELLED",
            status="OPEN",
            created_time=_now(),
            filled_size="0",
            average_filled_price="0",
            filled_value="0",
            number_of_fills="0",
            total_fees="0",
            completion_percentage="0",
        )
        self.orders[order["order_id"]] = order
        self.by_client_id[cid] = order["order_id"]
        marketable = limit is None or (limit >= touch if side == "BUY" else limit <= touch)
        if not marketable and self.faults.pending_new_next > 0:
            self.faults.pending_new_next -= 1
            order["status"] = "PENDING"
            self.pending_until[order["order_id"]] = time.monotonic() + self.faults.pending_new_s
        self._changed(order)
        if marketable:
            for lot in self.faults.lots(base):
                self._execute(order, lot, touch, TAKER)
        return self._created(order)

    def _created(self, order: dict[str, Any]) -> httpx.Response:
        body = copy.deepcopy(golden("create_order_success"))
        body["success_response"].update(
            order_id=order["order_id"],
            product_id=order["product_id"],
            side=order["side"],
            client_order_id=order["client_order_id"],
        )
        body["order_id"] = order["order_id"]
        body["order_configuration"] = order["order_configuration"]
        return httpx.Response(200, json=body)

    @staticmethod
    def _failed(error: str, message: str) -> httpx.Response:
        body = copy.deepcopy(golden("create_order_failure"))
        body["error_response"].update(error=error, message=message, preview_failure_reason=f"PREVIEW_{error}")
        return httpx.Response(200, json=body)

    def _open_pending(self) -> None:
        """Orders whose ``PENDING`` time is over are ``OPEN``."""
        now = time.monotonic()
        for order_id, until in list(self.pending_until.items()):
            if until <= now:
                del self.pending_until[order_id]
                if self.orders[order_id]["status"] == "PENDING":
                    self.orders[order_id]["status"] = "OPEN"
                    self._changed(self.orders[order_id])

    def trade(self, order_id: str, qty: Decimal | None = None) -> dict[str, Any]:
        """The market reaches a resting order: fill ``qty`` of it (all that is left) at its price."""
        order = self.orders[order_id]
        configured = next(iter(order["order_configuration"].values()))
        left = Decimal(configured["base_size"]) - Decimal(order["filled_size"])
        self._execute(order, qty if qty is not None else left, Decimal(configured["limit_price"]), MAKER)
        return order

    def _execute(self, order: dict[str, Any], size: Decimal, price: Decimal, rate: Decimal) -> None:
        filled = Decimal(order["filled_size"])
        total = filled + size
        value = Decimal(order["filled_value"]) + size * price
        fee = (size * price * rate).quantize(Decimal("0.01"))
        configured = next(iter(order["order_configuration"].values()))
        wanted = Decimal(configured["base_size"]) if "base_size" in configured else total
        order.update(
            filled_size=str(total),
            filled_value=str(value),
            average_filled_price=str((value / total).quantize(Decimal("0.01"))),
            total_fees=str(Decimal(order["total_fees"]) + fee),
            number_of_fills=str(int(order["number_of_fills"]) + 1),
            completion_percentage=str((total / wanted * 100).quantize(Decimal("0.01"))),
            status="FILLED" if total >= wanted else "OPEN",
            last_fill_time=_now(),
        )
        signed = size if order["side"] == "BUY" else -size
        self.cash -= signed * price + fee
        currency = order["product_id"].split("-")[0]
        self.holdings[currency] = self.holdings.get(currency, Decimal(0)) + signed
        fill = copy.deepcopy(golden("fill"))
        fill.update(
            entry_id=str(uuid.uuid4()),
            trade_id=str(uuid.uuid4()),
            order_id=order["order_id"],
            trade_time=order["last_fill_time"],
            price=str(price),
            size=str(size),
            commission=str(fee),
            product_id=order["product_id"],
            side=order["side"],
            liquidity_indicator="MAKER" if rate == MAKER else "TAKER",
        )
        self.fills.append(fill)
        self._changed(order)

    def _cancel(self, order_ids: list[str]) -> httpx.Response:
        results = []
        for order_id in order_ids:
            order = self.orders.get(order_id)
            if order is None or order["status"] != "OPEN":
                results.append({"success": False, "failure_reason": "UNKNOWN_CANCEL_ORDER", "order_id": order_id})
                continue
            order["status"] = "CANCELLED"
            self._changed(order)
            results.append({"success": True, "failure_reason": "UNKNOWN_CANCEL_FAILURE_REASON", "order_id": order_id})
        return httpx.Response(200, json={"results": results})

    def _list(self, params: httpx.QueryParams) -> httpx.Response:
        if self.faults.hidden_lookups > 0:
            self.faults.hidden_lookups -= 1
            return httpx.Response(200, json={"orders": [], "sequence": "0", "has_next": False, "cursor": ""})
        products = set(params.get_list("product_ids"))
        start = (
            datetime.fromisoformat(params["start_date"].replace("Z", "+00:00")) if params.get("start_date") else None
        )
        found = [
            o
            for o in self.orders.values()
            if (not products or o["product_id"] in products) and (start is None or _time(o["created_time"]) >= start)
        ]
        return httpx.Response(200, json={"orders": found, "sequence": "0", "has_next": False, "cursor": ""})

    def _accounts(self) -> dict[str, Any]:
        accounts = []
        for currency, total in [("USD", self.cash), *sorted(self.holdings.items())]:
            account = copy.deepcopy(golden("account"))
            account.update(
                uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, currency)), name=f"{currency} Wallet", currency=currency
            )
            account["available_balance"] = {"value": str(total), "currency": currency}
            account["hold"] = {"value": "0", "currency": currency}
            accounts.append(account)
        return {"accounts": accounts, "has_next": False, "cursor": "", "size": len(accounts)}

    def _ticker(self, product: str) -> httpx.Response:
        if product.startswith("UNKNOWN"):
            return httpx.Response(404, json={"error": "NOT_FOUND", "message": "product not found"})
        quote = self.quotes.quote(product)
        body = copy.deepcopy(golden("ticker"))
        body["trades"][0].update(product_id=product, price=str(quote.mid), time=_now())
        body.update(best_bid=str(quote.bid), best_ask=str(quote.ask))
        return httpx.Response(200, json=body)

    def _books(self, products: list[str]) -> dict[str, Any]:
        books = []
        for product in filter(None, products):
            quote = self.quotes.quote(product)
            books.append(
                {
                    "product_id": product,
                    "bids": [{"price": str(quote.bid), "size": "1"}],
                    "asks": [{"price": str(quote.ask), "size": "1"}],
                    "time": _now(),
                }
            )
        return {"pricebooks": books}
