"""A stateful fake of Charles Schwab's Trader API and its OAuth server, for the adapter's tests:
no network.

It answers in the shapes of ``golden/schwab/`` and reproduces what mbx relies on:

- **OAuth2**: ``POST /v1/oauth/token`` takes the authorization code of a login (issued by
  ``authorize``) or a refresh token, with the app key and secret in Basic auth; access tokens
  last 30 minutes (``expire_access_tokens`` ends them early), refresh tokens until
  ``refresh_refused`` (Schwab's ``refresh_token_authentication_error``). Every Trader API call
  needs a live Bearer token (401 otherwise).
- **Accounts** are addressed by the hash of ``/accounts/accountNumbers``.
- **Orders**: a placement answers ``201`` with an empty body and the order id only in
  ``Location``; there is no client order id and no dedup (the same order twice is two orders);
  orders are listed by entered-time window (both ends required). Market orders fill at once at
  the simulator's quote; a limit order rests until ``trade`` fills it. Executions are
  ``orderActivityCollection`` entries with their own ``activityId``.

Its fault switches are the other fakes' (``FakeFaults``). With a ``window``, the Trader API
keeps a request limit (sources say 120 a minute; the count is the fake's, no reset header is
documented, so a 429 carries none); with ``orders_per_day``, order calls (placements and
cancels) past that many in a day are refused with a 429 and counted in ``over_daily_cap``
(Schwab documents 4,000 a day; a test sets a small cap to reach it).
"""

from __future__ import annotations

import base64
import copy
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx

from tests.fakes.alpaca import FakeFaults
from tests.fakes.rate_window import FixedWindow
from workers.venues.simulated.quotes import QuoteModel

GOLDEN = Path(__file__).parent / "golden" / "schwab"
HOST = "https://api.schwabapi.com"
ACCESS_TOKEN_LIFE_S = 1800


def golden(name: str) -> Any:
    return json.loads((GOLDEN / f"{name}.json").read_text())


def schwab_time(at: datetime | None = None) -> str:
    """Schwab's timestamps: ``2026-11-30T14:55:51+0000``."""
    return (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S+0000")


def _parse_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z" if "." in value else "%Y-%m-%dT%H:%M:%S%z")


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


@dataclass
class FakeSchwab:
    app_key: str = "fake-schwab-app-key-0001"
    app_secret: str = "fake-schwab-app-secret-0001"
    account_number: str = "12345678"
    account_hash: str = golden("account_numbers")[0]["hashValue"]
    cash: Decimal = Decimal(100_000)
    quotes: QuoteModel = field(default_factory=QuoteModel)
    faults: FakeFaults = field(default_factory=FakeFaults)
    refresh_refused: bool = False
    """Refresh tokens are refused (they expired: Schwab's last seven days)."""
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    holdings: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    """symbol -> (quantity, average price)."""
    access_tokens: dict[str, float] = field(default_factory=dict)
    """access token -> when it expires (UNIX seconds)."""
    refresh_tokens: set[str] = field(default_factory=set)
    codes: dict[str, str] = field(default_factory=dict)
    """authorization code -> the redirect URI it was issued for."""
    requests: list[tuple[str, str]] = field(default_factory=list)
    refreshes: int = 0
    window: FixedWindow | None = None
    """The Trader API's request limit (120 a minute)."""
    orders_per_day: int | None = None
    """Order calls (placements and cancels) allowed a day."""
    order_calls: int = 0
    over_daily_cap: int = 0
    """Order calls refused because the day's cap was spent."""
    _next_order: int = 1_000_000_001
    _next_activity: int = 88_000_001

    def switch_faults(self, changes: dict[str, Any]) -> dict[str, Any]:
        changes = dict(changes)
        if "refresh_refused" in changes:
            self.refresh_refused = bool(changes.pop("refresh_refused"))
        return self.faults.switch(changes) | {"refresh_refused": self.refresh_refused}

    # OAuth ---------------------------------------------------------------------------------

    def authorize(self, redirect_uri: str) -> str:
        """What Schwab's login page does once the user logs in: a one-time code for the app."""
        code = f"C0.{secrets.token_urlsafe(24)}@"
        self.codes[code] = redirect_uri
        return code

    def issue_tokens(self) -> dict[str, Any]:
        """A fresh token pair, as the token endpoint gives it (also for tests that start with
        a login already done)."""
        token = dict(golden("token"))
        token["access_token"] = f"I0.{secrets.token_urlsafe(32)}@"
        token["refresh_token"] = f"R0.{secrets.token_urlsafe(32)}@"
        token["id_token"] = f"eyJ0eXAiOiJKV1QiLCJraWQiOiJmYWtlIn0.{secrets.token_urlsafe(16)}"
        self.access_tokens[token["access_token"]] = time.time() + ACCESS_TOKEN_LIFE_S
        self.refresh_tokens.add(token["refresh_token"])
        return token

    def expire_access_tokens(self) -> None:
        self.access_tokens = dict.fromkeys(self.access_tokens, 0.0)

    def _token(self, request: httpx.Request) -> httpx.Response:
        basic = base64.b64encode(f"{self.app_key}:{self.app_secret}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {basic}":
            return httpx.Response(401, json={"error": "invalid_client", "error_description": "Unauthorized"})
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        grant = form.get("grant_type")
        if grant == "authorization_code":
            if self.codes.pop(form.get("code", ""), None) != form.get("redirect_uri"):
                return httpx.Response(
                    400, json={"error": "invalid_request", "error_description": "Bad authorization code"}
                )
            return httpx.Response(200, json=self.issue_tokens())
        if grant == "refresh_token":
            if self.refresh_refused or form.get("refresh_token") not in self.refresh_tokens:
                return httpx.Response(
                    400,
                    json={
                        "error": "refresh_token_authentication_error",
                        "error_description": "Failed refresh token authentication",
                    },
                )
            self.refreshes += 1
            token = self.issue_tokens()
            self.refresh_tokens.discard(token["refresh_token"])
            token["refresh_token"] = form["refresh_token"]  # the refresh token stays the same
            return httpx.Response(200, json=token)
        return httpx.Response(400, json={"error": "unsupported_grant_type"})

    def _authorized(self, request: httpx.Request) -> bool:
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        return not self.faults.auth_expired and self.access_tokens.get(bearer, 0.0) > time.time()

    # The wire ------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.faults.outage:
            raise httpx.ConnectError("connection refused", request=request)
        path, method = request.url.path, request.method
        if path == "/v1/oauth/token" and method == "POST":
            return self._token(request)
        # No rate-limit headers are documented: a 429 says nothing of when to come back.
        if self.faults.network(request) is not None or (self.window is not None and not self.window.admit()):
            return _error(429, "Too Many Requests")
        ordering = (method == "POST" and path.endswith("/orders")) or (method == "DELETE" and "/orders/" in path)
        if ordering and self.orders_per_day is not None:
            if self.order_calls >= self.orders_per_day:
                self.over_daily_cap += 1
                return _error(429, "Daily order limit exceeded")
            self.order_calls += 1
        if self.faults.server_error():
            return _error(503, "Service Unavailable")
        return self.faults.slow(self._answer(request))

    def _answer(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        if self.faults.read_fails(request):
            return _error(503, "Service Unavailable")
        if not self._authorized(request):
            return httpx.Response(
                401,
                json={"errors": [{"status": "401", "title": "Unauthorized", "detail": "Client not authorized"}]},
            )
        self.requests.append((method, path))
        if path == "/trader/v1/accounts/accountNumbers" and method == "GET":
            return httpx.Response(200, json=[{"accountNumber": self.account_number, "hashValue": self.account_hash}])
        prefix = f"/trader/v1/accounts/{self.account_hash}"
        if not path.startswith(prefix):
            return _error(404 if "/accounts/" not in path else 400, "Invalid account")
        rest = path.removeprefix(prefix)
        if rest == "" and method == "GET":
            return httpx.Response(200, json=self._account("positions" in request.url.params.get("fields", "")))
        if rest == "/orders" and method == "POST":
            response = self._place(json.loads(request.content))
            if response.status_code == 201:
                self.faults.placed()
                if self.faults.timeouts_after_accept > 0:
                    self.faults.timeouts_after_accept -= 1
                    raise httpx.ReadTimeout("the reply was lost", request=request)
                if self.faults.error_after_accept():
                    return _error(500, "Internal Server Error")
            return response
        if rest == "/orders" and method == "GET":
            return self._list(request.url.params)
        if rest.startswith("/orders/"):
            order = self.orders.get(rest.removeprefix("/orders/"))
            if order is None:
                return _error(404, "Order not found")
            if method == "GET":
                return httpx.Response(200, json=self._as_read(order))
            if method == "DELETE":
                if not order["cancelable"]:
                    return _error(400, f"Order {order['orderId']} cannot be canceled: it is {order['status']}")
                order.update(status="CANCELED", cancelable=False, editable=False, closeTime=schwab_time())
                return httpx.Response(200)
        return _error(404, f"no route {method} {path}")

    def _place(self, body: dict[str, Any]) -> httpx.Response:
        try:
            [leg] = body["orderLegCollection"]
            symbol, asset = leg["instrument"]["symbol"], leg["instrument"]["assetType"]
            quantity = Decimal(str(leg["quantity"]))
            kind, instruction = body["orderType"], leg["instruction"]
            body["session"], body["duration"], body["orderStrategyType"]
        except (KeyError, ValueError, TypeError):
            return _error(400, "A validation error occurred while processing the request.")
        if self.faults.reject_next > 0:
            self.faults.reject_next -= 1
            return _error(400, "You do not have enough available cash/buying power for this order.")
        if symbol in self.faults.unknown_symbols:
            return _error(400, f"Symbol {symbol} is not valid.")
        buying = instruction.startswith("BUY")
        quote = self.quotes.quote(symbol)
        touch = quote.ask if buying else quote.bid
        limit = Decimal(str(body["price"])) if body.get("price") is not None else None
        multiplier = 100 if asset == "OPTION" else 1
        if buying and quantity * (limit or touch) * multiplier > self.cash:
            return _error(400, "You do not have enough available cash/buying power for this order.")
        order = copy.deepcopy(golden("order"))
        order_id = self._next_order
        self._next_order += 1
        order.update(
            session=body["session"],
            duration=body["duration"],
            orderType=kind,
            quantity=_number(quantity),
            filledQuantity=0,
            remainingQuantity=_number(quantity),
            orderId=order_id,
            status="WORKING" if kind != "MARKET" else "QUEUED",
            enteredTime=schwab_time(),
            orderActivityCollection=[],
            accountNumber=int(self.account_number),
        )
        order.pop("price", None)
        for key in ("price", "stopPrice"):
            if body.get(key) is not None:
                order[key] = body[key]
        order["orderLegCollection"] = [
            {
                "orderLegType": asset,
                "legId": 1,
                "instrument": {"assetType": asset, "symbol": symbol},
                "instruction": instruction,
                "positionEffect": "OPENING" if buying else "CLOSING",
                "quantity": _number(quantity),
            }
        ]
        self.orders[str(order_id)] = order
        if limit is None or (limit >= touch if buying else limit <= touch):
            for lot in self.faults.lots(quantity):
                self._execute(order, lot, touch)
        location = f"{HOST}/trader/v1/accounts/{self.account_hash}/orders/{order_id}"
        return httpx.Response(201, headers={"Location": location})

    def trade(self, order_id: str, qty: Decimal | None = None) -> dict[str, Any]:
        """The market reaches a working order: fill ``qty`` (all that is left) at its limit."""
        order = self.orders[str(order_id)]
        left = Decimal(str(order["remainingQuantity"]))
        price = Decimal(str(order["price"])) if order.get("price") is not None else self.quotes.mid(self._symbol(order))
        self._execute(order, qty if qty is not None else left, price)
        return order

    @staticmethod
    def _symbol(order: dict[str, Any]) -> str:
        return str(order["orderLegCollection"][0]["instrument"]["symbol"])

    def _execute(self, order: dict[str, Any], size: Decimal, price: Decimal) -> None:
        left = Decimal(str(order["remainingQuantity"])) - size
        filled = Decimal(str(order["filledQuantity"])) + size
        activity = self._next_activity
        self._next_activity += 1
        order["orderActivityCollection"].append(
            {
                "activityType": "EXECUTION",
                "activityId": activity,
                "executionType": "FILL",
                "quantity": _number(size),
                "orderRemainingQuantity": _number(left),
                "executionLegs": [
                    {
                        "legId": 1,
                        "quantity": _number(size),
                        "mismarkedQuantity": 0,
                        "price": float(price),
                        "time": schwab_time(),
                    }
                ],
            }
        )
        done = left <= 0
        order.update(
            filledQuantity=_number(filled),
            remainingQuantity=_number(left),
            status="FILLED" if done else "WORKING",
            cancelable=not done,
            editable=not done,
        )
        if done:
            order["closeTime"] = schwab_time()
        leg = order["orderLegCollection"][0]
        signed = size if leg["instruction"].startswith("BUY") else -size
        multiplier = 100 if leg["instrument"]["assetType"] == "OPTION" else 1
        self.cash -= signed * price * multiplier
        held, cost = self.holdings.get(self._symbol(order), (Decimal(0), Decimal(0)))
        after = held + signed
        average = (held * cost + signed * price) / after if signed > 0 and after else cost
        self.holdings[self._symbol(order)] = (after, average)

    def _as_read(self, order: dict[str, Any]) -> dict[str, Any]:
        """The order as a read finds it: with ``lagging_fills``, its latest execution not yet
        listed while its totals already count it."""
        activities = self.faults.lag(order["orderActivityCollection"])
        return (
            order if activities is order["orderActivityCollection"] else order | {"orderActivityCollection": activities}
        )

    def _list(self, params: httpx.QueryParams) -> httpx.Response:
        if not params.get("fromEnteredTime") or not params.get("toEnteredTime"):
            return _error(400, "fromEnteredTime and toEnteredTime are required")
        if self.faults.hidden_lookups > 0:
            self.faults.hidden_lookups -= 1
            return httpx.Response(200, json=[])
        start, end = _parse_time(params["fromEnteredTime"]), _parse_time(params["toEnteredTime"])
        status = params.get("status")
        found = [
            o
            for o in self.orders.values()
            if start <= _parse_time(o["enteredTime"]) <= end and (not status or o["status"] == status)
        ]
        found.sort(key=lambda o: o["orderId"], reverse=True)  # newest first, as Schwab lists
        return httpx.Response(200, json=[self._as_read(o) for o in found[: int(params.get("maxResults") or 3000)]])

    def _account(self, positions: bool) -> dict[str, Any]:
        account = copy.deepcopy(golden("account"))
        held = Decimal(0)
        lines = []
        for symbol, (quantity, average) in sorted(self.holdings.items()):
            if quantity == 0:
                continue
            mark = self.quotes.mid(symbol)
            value = quantity * mark
            held += value
            line = copy.deepcopy(golden("position"))
            line.update(
                longQuantity=float(max(quantity, Decimal(0))),
                shortQuantity=float(max(-quantity, Decimal(0))),
                averagePrice=float(average),
                averageLongPrice=float(average),
                marketValue=float(value),
                longOpenProfitLoss=float((mark - average) * quantity),
            )
            line["instrument"] = {"assetType": "EQUITY", "symbol": symbol, "netChange": 0}
            lines.append(line)
        balances = account["securitiesAccount"]["currentBalances"]
        balances.update(
            cashBalance=float(self.cash),
            availableFunds=float(self.cash),
            buyingPower=float(self.cash),
            liquidationValue=float(self.cash + held),
            longMarketValue=float(held),
        )
        account["securitiesAccount"]["accountNumber"] = self.account_number
        if positions:
            account["securitiesAccount"]["positions"] = lines
        else:
            account["securitiesAccount"].pop("positions")
        return account


def _error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"message": message, "errors": [message]})
