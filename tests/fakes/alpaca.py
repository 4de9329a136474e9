"""A stateful fake of Alpaca's Trading API v2, for the adapter's tests: no network.

It answers with Alpaca's own documented shapes (each order, fill, position and account is the
golden example of ``golden/alpaca/`` with this order's values put in) and reproduces the
semantics mbx relies on: the key headers are checked (401), a repeated client order id is
refused with ``422 {"code": 40010001}``, an order is found by client order id, an order that
ended cannot be cancelled (422), executions are ``FILL`` activities. Market orders fill at the
simulator's quote; a limit order rests until ``trade`` fills it (in parts if asked).

Mount it with ``httpx.MockTransport(fake.handle)``. Its fault switches are the simulator's:
``outage``, ``timeouts_after_accept``, ``reject_next``, ``hidden_lookups``, plus
``rate_limited_next`` (429 with ``X-RateLimit-Reset``) and ``auth_expired`` (401).
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.rate_window import FixedWindow
from workers.venues.simulated.quotes import QuoteModel

GOLDEN = Path(__file__).parent / "golden" / "alpaca"


def golden(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text())
    return data


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class FakeFaults:
    """The fault switches every fake broker has: the simulator's, by the same names (all but
    latency_ms: a fake answers at once), plus 429s and expired keys."""

    outage: bool = False
    timeouts_after_accept: int = 0
    reject_next: int = 0
    hidden_lookups: int = 0
    rate_limited_next: int = 0
    auth_expired: bool = False
    unknown_symbols: list[str] = field(default_factory=lambda: ["UNKNOWNX"])
    """Symbols the broker does not list (its refusal is order-specific)."""
    lot_size: Decimal | None = None
    """Marketable orders larger than this fill in several executions of at most this size."""
    lagging_fills: int = 0
    """The next N reads of executions miss the latest one, as a broker's lists lag its orders."""
    unreadable_after_place: bool = False
    """The read right after the next placement fails with a 503 (the order exists all the same)."""
    server_errors_next: int = 0
    """The next N requests are answered 503 before the broker reads them: nothing is done."""
    server_errors_after_accept: int = 0
    """The next N placements are made, and answered 500 all the same (the order exists)."""
    slow_replies: int = 0
    """The next N requests are done at once but answered only after ``slow_reply_s`` (served
    over HTTP; ``tests/fakes/serve.py`` waits outside the fake's lock)."""
    slow_reply_s: float = 3.0
    idle_closes_next: int = 0
    """The next N requests that arrive on a reused keep-alive connection find it closed by the
    server: the connection drops before the request is read, so nothing is done."""
    stream_down: bool = False
    """The broker's stream refuses connections (``tests/fakes/stream.py``)."""
    pending_new_next: int = 0
    """The next N resting orders are answered ``pending_new`` and stay so for ``pending_new_s``
    (Alpaca: routed, not yet accepted by the venue)."""
    pending_new_s: float = 1.0
    rate_limited_orders_next: int = 0
    """The next N order placements (a POST to the orders path) get a scripted 429."""
    rate_limited_sent: int = 0
    """The scripted 429s answered so far (``rate_limited_next``), apart from the rate window's."""
    _failing_reads: int = 0

    def placed(self) -> None:
        if self.unreadable_after_place:
            self.unreadable_after_place, self._failing_reads = False, 1

    def read_fails(self, request: httpx.Request) -> bool:
        if request.method == "GET" and self._failing_reads > 0:
            self._failing_reads -= 1
            return True
        return False

    def lag(self, fills: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.lagging_fills > 0 and fills:
            self.lagging_fills -= 1
            return fills[:-1]
        return fills

    def lots(self, quantity: Decimal) -> list[Decimal]:
        """The executions a marketable order of ``quantity`` fills in."""
        if self.lot_size is None or quantity <= self.lot_size:
            return [quantity]
        whole, rest = divmod(quantity, self.lot_size)
        return [self.lot_size] * int(whole) + ([rest] if rest else [])

    def switch(self, changes: dict[str, Any]) -> dict[str, Any]:
        for name, value in changes.items():
            if not hasattr(self, name):
                raise ValueError(f"unknown fault {name!r}")
            setattr(self, name, Decimal(str(value)) if name == "lot_size" and value is not None else value)
        return dict(self.__dict__)

    def network(self, request: httpx.Request, reset_at: Callable[[], int] | None = None) -> int | None:
        """What the network and the broker's gate do before the request is read: a refused
        connection or a kept-alive connection the server closed (raised), or the reset time
        (UNIX seconds; ``reset_at``, else two seconds on) of a scripted 429 to answer with."""
        if self.outage:
            raise httpx.ConnectError("connection refused", request=request)
        if self.idle_closes_next > 0 and request.extensions.get("reused_connection"):
            self.idle_closes_next -= 1
            raise httpx.RemoteProtocolError("server closed the idle connection", request=request)
        placing = request.method == "POST" and request.url.path.rstrip("/").endswith("/orders")
        if self.rate_limited_next > 0 or (placing and self.rate_limited_orders_next > 0):
            if self.rate_limited_next > 0:
                self.rate_limited_next -= 1
            else:
                self.rate_limited_orders_next -= 1
            self.rate_limited_sent += 1
            return reset_at() if reset_at else int(time.time()) + 2
        return None

    def server_error(self) -> bool:
        """True when this request gets a 5xx before the broker reads it."""
        if self.server_errors_next > 0:
            self.server_errors_next -= 1
            return True
        return False

    def error_after_accept(self) -> bool:
        """True when this accepted placement is answered with a 5xx all the same."""
        if self.server_errors_after_accept > 0:
            self.server_errors_after_accept -= 1
            return True
        return False

    def slow(self, response: httpx.Response) -> httpx.Response:
        """The response, marked to be sent ``slow_reply_s`` late when a slow reply is due."""
        if self.slow_replies > 0:
            self.slow_replies -= 1
            response.extensions["delay_s"] = self.slow_reply_s
        return response


@dataclass
class FakeAlpaca:
    key_id: str = "fake-key-id"
    secret_key: str = "fake-secret-key"
    cash: Decimal = Decimal(100_000)
    quotes: QuoteModel = field(default_factory=QuoteModel)
    faults: FakeFaults = field(default_factory=FakeFaults)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_client_id: dict[str, str] = field(default_factory=dict)
    activities: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    """(method, path) of every request that reached the fake."""
    stale_quotes: bool = False
    listeners: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    """Called with each ``trade_updates`` message (the stream server registers here)."""
    window: FixedWindow | None = None
    """Alpaca's rate limit (200 a minute per account): requests past it are refused with 429,
    ``X-RateLimit-Reset`` the window's end; after a 429 (a scripted one too) the window stays
    closed until then. Every answer carries the three headers."""
    pending_until: dict[str, float] = field(default_factory=dict)
    """Orders answered ``pending_new``, and when (monotonic) the venue accepts them."""

    def _publish(self, event: str, order: dict[str, Any], **extra: Any) -> None:
        """A ``trade_updates`` message, shaped as Alpaca's streaming docs show it."""
        message = {
            "stream": "trade_updates",
            "data": {"event": event, "order": copy.deepcopy(order), "timestamp": _now(), **extra},
        }
        for listener in list(self.listeners):
            listener(message)

    def switch_faults(self, changes: dict[str, Any]) -> dict[str, Any]:
        return self.faults.switch(changes)

    # The wire ------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        reset = self.faults.network(request, self.window.reset_at if self.window else None)
        if reset is not None and self.window is not None:
            self.window.close()
        elif self.window is not None and not self.window.admit():
            reset = self.window.reset_at()
            self.window.close()
        if reset is not None:
            return self._limited(_error(429, 42910000, "rate limit exceeded"), reset)
        self._accept_pending()
        if self.faults.server_error():
            return self._limited(_error(503, 50300000, "service unavailable"))
        return self._limited(self.faults.slow(self._answer(request)))

    def _limited(self, response: httpx.Response, reset: int | None = None) -> httpx.Response:
        """``response`` with Alpaca's rate-limit headers (when the fake keeps a window)."""
        if self.window is not None or reset is not None:
            response.headers["X-RateLimit-Limit"] = str(self.window.limit if self.window else 200)
            response.headers["X-RateLimit-Remaining"] = str(self.window.remaining() if self.window else 0)
            response.headers["X-RateLimit-Reset"] = str(reset or (self.window.reset_at() if self.window else 0))
        return response

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if self.faults.read_fails(request):
            return _error(503, 50300000, "service unavailable")
        if self.faults.auth_expired or (
            request.headers.get("APCA-API-KEY-ID"),
            request.headers.get("APCA-API-SECRET-KEY"),
        ) != (self.key_id, self.secret_key):
            return _error(401, 40110000, "request is not authorized")
        self.requests.append((request.method, request.url.path))
        path, method = request.url.path, request.method
        if path == "/v2/orders" and method == "POST":
            response = self._place(json.loads(request.content))
            if response.status_code == 200:
                self.faults.placed()
            if response.status_code == 200 and self.faults.timeouts_after_accept > 0:
                self.faults.timeouts_after_accept -= 1
                raise httpx.ReadTimeout("the reply was lost", request=request)
            if response.status_code == 200 and self.faults.error_after_accept():
                return _error(500, 50000000, "internal server error")
            return response
        if path == "/v2/orders:by_client_order_id" and method == "GET":
            cid = request.url.params.get("client_order_id", "")
            if self.faults.hidden_lookups > 0:
                self.faults.hidden_lookups -= 1
                return _error(404, 40410000, "order not found")
            order_id = self.by_client_id.get(cid)
            return _json(self.orders[order_id]) if order_id else _error(404, 40410000, "order not found")
        if path.startswith("/v2/orders/"):
            order_id = path.rsplit("/", 1)[1]
            if order_id not in self.orders:
                return _error(404, 40410000, "order not found")
            if method == "GET":
                return _json(self.orders[order_id])
            if method == "DELETE":
                return self._cancel(order_id)
        if path == "/v2/account" and method == "GET":
            return _json(self._account())
        if path == "/v2/positions" and method == "GET":
            return _json(self._positions())
        if path == "/v2/account/activities/FILL" and method == "GET":
            return _json(self._fills(request.url.params))
        if method == "GET" and (
            path.startswith("/v2/stocks/") or path.endswith("/latest/quotes") or path.endswith("/quotes/latest")
        ):
            return self._latest_quotes(path, request.url.params)
        return _error(404, 40410000, f"no route {method} {path}")

    def _place(self, body: dict[str, Any]) -> httpx.Response:
        cid = str(body.get("client_order_id") or uuid.uuid4())
        if cid in self.by_client_id:
            return _error(422, 40010001, "client_order_id must be unique")
        if self.faults.reject_next > 0:
            self.faults.reject_next -= 1
            return _error(403, 40310000, "insufficient buying power")
        symbol = str(body["symbol"])
        if symbol in self.faults.unknown_symbols:
            return _error(422, 42210000, f'asset "{symbol}" not found')
        crypto = "/" in symbol
        quote = self.quotes.quote(symbol.replace("/", "-"))
        side = body["side"]
        touch = quote.ask if side == "buy" else quote.bid
        qty = Decimal(body["qty"]) if body.get("qty") else (Decimal(body["notional"]) / touch).quantize(Decimal("1e-9"))
        limit = Decimal(body["limit_price"]) if body.get("limit_price") else None
        if side == "buy" and qty * (limit or touch) > self.cash:
            return _error(403, 40310000, "insufficient buying power")
        order = copy.deepcopy(golden("order" if crypto else "order_equity"))
        now = _now()
        order.update(
            id=str(uuid.uuid4()),
            client_order_id=cid,
            asset_class="crypto" if crypto else "us_equity",
            symbol=symbol,
            side=side,
            type=body["type"],
            order_type=body["type"],
            time_in_force=body.get("time_in_force", "day"),
            qty=str(qty),
            notional=body.get("notional"),
            limit_price=body.get("limit_price"),
            stop_price=body.get("stop_price"),
            status="new",
            filled_qty="0",
            filled_avg_price=None,
            created_at=now,
            submitted_at=now,
            updated_at=now,
        )
        self.orders[order["id"]] = order
        self.by_client_id[cid] = order["id"]
        marketable = limit is None or (limit >= touch if side == "buy" else limit <= touch)
        if not marketable and self.faults.pending_new_next > 0:
            self.faults.pending_new_next -= 1
            order["status"] = "pending_new"
            self.pending_until[order["id"]] = time.monotonic() + self.faults.pending_new_s
            self._publish("pending_new", order)
            return _json(order)
        self._publish("new", order)
        if body["type"] == "market" or (body["type"] == "limit" and marketable):
            for lot in self.faults.lots(qty):
                self._execute(order, lot, touch)
        return _json(order)

    def trade(self, order_id: str, qty: Decimal | None = None) -> dict[str, Any]:
        """The market reaches a working order: fill ``qty`` (all that is left when None) at
        its limit price."""
        order = self.orders[order_id]
        left = Decimal(order["qty"]) - Decimal(order["filled_qty"])
        price = Decimal(order["limit_price"]) if order.get("limit_price") else self.quotes.mid(order["symbol"])
        self._execute(order, qty if qty is not None else left, price)
        return order

    def _execute(self, order: dict[str, Any], qty: Decimal, price: Decimal) -> None:
        filled = Decimal(order["filled_qty"])
        average = Decimal(order["filled_avg_price"] or 0)
        total = filled + qty
        order["filled_avg_price"] = str(((average * filled + price * qty) / total).quantize(Decimal("0.0001")))
        order["filled_qty"] = str(total)
        done = total >= Decimal(order["qty"])
        order["status"] = "filled" if done else "partially_filled"
        order["updated_at"] = _now()
        if done:
            order["filled_at"] = order["updated_at"]
        value = qty * price
        self.cash += -value if order["side"] == "buy" else value
        activity = copy.deepcopy(golden("fill_activity"))
        activity.update(
            id=f"{datetime.now(UTC).strftime('%Y%m%d%H%M%S%f')}::{uuid.uuid4()}",
            order_id=order["id"],
            symbol=order["symbol"],
            side=order["side"],
            qty=str(qty),
            price=str(price),
            cum_qty=str(total),
            leaves_qty=str(Decimal(order["qty"]) - total),
            order_status=order["status"],
            type="fill" if done else "partial_fill",
            transaction_time=order["updated_at"],
        )
        self.activities.append(activity)
        self._publish(
            activity["type"],
            order,
            execution_id=activity["id"],
            price=activity["price"],
            qty=activity["qty"],
            position_qty=activity["cum_qty"],
        )

    def _accept_pending(self) -> None:
        """The venue accepts the orders whose ``pending_new`` time is over: they become ``new``."""
        now = time.monotonic()
        for order_id, until in list(self.pending_until.items()):
            if until <= now:
                del self.pending_until[order_id]
                order = self.orders[order_id]
                if order["status"] == "pending_new":
                    order.update(status="new", updated_at=_now())
                    self._publish("new", order)

    def end_day(self) -> None:
        """The trading day ends: working GTC orders become ``done_for_day`` (they resume the
        next day, as Alpaca's docs say), working day orders ``expired``."""
        for order in self.orders.values():
            if order["status"] in ("new", "accepted", "pending_new", "partially_filled"):
                gtc = order["time_in_force"] == "gtc"
                order.update(status="done_for_day" if gtc else "expired", updated_at=_now())
                if not gtc:
                    order["expired_at"] = order["updated_at"]
                self._publish(order["status"], order)

    def next_day(self) -> None:
        """The next trading day opens: ``done_for_day`` orders work again."""
        for order in self.orders.values():
            if order["status"] == "done_for_day":
                resumed = "partially_filled" if Decimal(order["filled_qty"]) > 0 else "new"
                order.update(status=resumed, updated_at=_now())
                self._publish("new", order)

    def _latest_quotes(self, path: str, params: httpx.QueryParams) -> httpx.Response:
        """Market data: the simulator's quote, in Alpaca's documented shapes; ``stale_quotes``
        dates them an hour back."""
        at = datetime.now(UTC) - (timedelta(hours=1) if self.stale_quotes else timedelta(0))
        stamp = at.isoformat().replace("+00:00", "Z")

        def one(symbol: str, ours: str) -> dict[str, Any]:
            quote = self.quotes.quote(ours)
            return {"ap": float(quote.ask), "as": 1, "bp": float(quote.bid), "bs": 1, "t": stamp}

        if path.startswith("/v2/stocks/"):
            symbol = path.split("/")[3]
            body = copy.deepcopy(golden("stock_latest_quote"))
            body["symbol"] = symbol
            body["quote"].update(one(symbol, symbol))
            return _json(body)
        symbols = [s for s in params.get("symbols", "").split(",") if s]
        crypto = path.startswith("/v1beta3/crypto/")
        template = golden("crypto_latest_quotes" if crypto else "option_latest_quotes")
        example = next(iter(template["quotes"].values()))
        quotes = {s: example | one(s, s.replace("/", "-") if crypto else s) for s in symbols}
        return _json({"quotes": quotes})

    def _cancel(self, order_id: str) -> httpx.Response:
        order = self.orders[order_id]
        if order["status"] in ("filled", "canceled", "expired", "rejected", "done_for_day"):
            return _error(422, 42210000, "order is not cancelable")
        order["status"] = "canceled"
        order["canceled_at"] = order["updated_at"] = _now()
        self._publish("canceled", order)
        return httpx.Response(204)

    def _account(self) -> dict[str, Any]:
        account = copy.deepcopy(golden("account"))
        held = sum((Decimal(p["market_value"]) for p in self._positions()), Decimal(0))
        account.update(cash=str(self.cash), buying_power=str(self.cash), portfolio_value=str(self.cash + held))
        return account

    def _positions(self) -> list[dict[str, Any]]:
        held: dict[str, tuple[Decimal, Decimal, str]] = {}
        for activity in self.activities:
            order = self.orders[activity["order_id"]]
            qty, cost, _ = held.get(order["symbol"], (Decimal(0), Decimal(0), order["asset_class"]))
            signed = Decimal(activity["qty"]) * (1 if activity["side"] == "buy" else -1)
            held[order["symbol"]] = (qty + signed, cost + signed * Decimal(activity["price"]), order["asset_class"])
        lines = []
        for symbol, (qty, cost, asset_class) in sorted(held.items()):
            if qty == 0:
                continue
            mark = self.quotes.mid(symbol.replace("/", "-"))
            line = copy.deepcopy(golden("position"))
            line.update(
                symbol=symbol,
                asset_class=asset_class,
                qty=str(abs(qty)),
                side="long" if qty > 0 else "short",
                avg_entry_price=str((cost / qty).quantize(Decimal("0.0001"))),
                current_price=str(mark),
                market_value=str(qty * mark),
                cost_basis=str(cost),
                unrealized_pl=str(qty * mark - cost),
            )
            lines.append(line)
        return lines

    def _fills(self, params: httpx.QueryParams) -> list[dict[str, Any]]:
        after = _parse_time(params["after"]) if params.get("after") else None
        page_size = int(params.get("page_size", 100))
        token = params.get("page_token")
        rows = self.faults.lag(
            [a for a in self.activities if after is None or _parse_time(a["transaction_time"]) > after]
        )
        if token:
            ids = [a["id"] for a in rows]
            rows = rows[ids.index(token) + 1 :] if token in ids else []
        return rows[:page_size]


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _json(body: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body)


def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message}, headers=headers)
