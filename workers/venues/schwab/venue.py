"""Charles Schwab's Trader API, through schwab-py's asynchronous client (``httpx`` under
authlib's OAuth2 session, which renews the 30-minute access token by itself).

The client is built as schwab-py's ``client_from_access_functions`` builds it, from mbx's own
token store (``tokens.py``: a 0600 file, never logged), plus a transport: the tests' fake
broker, or ``base_url`` (every request is sent there instead of Schwab's host). When renewing
the login is refused (its seven days are over) the broker is down with that reason until an
operator logs in again (``mbx auth schwab``); the next request reads the new login.

Schwab has no client order id: a placement answers 201 with the order id only in ``Location``,
and an order is found by listing the orders entered since the decision and matching symbol,
side, size, type and prices (the executor's shape lock keeps two same-shaped intents apart,
``workers/executor/same_shape.py``). Schwab's account-activity stream is reported silent, so
working orders are polled within the rate budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import structlog
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from schwab.auth import TokenMetadata
from schwab.client import AsyncClient
from schwab.utils import Utils

from contracts import AccountSnapshot, AssetClass, BrokerName, OrderIntent, OrderStatus, OrderType, PositionLine
from workers.domain.capabilities import CAPABILITIES, VenueCapabilities
from workers.domain.fees import DEFAULT_FEES, commission, round_up_to_cent
from workers.domain.instruments import is_option
from workers.domain.venue import (
    OpenGate,
    RequestGate,
    VenueAmbiguous,
    VenueAuthFailed,
    VenueFill,
    VenueOrder,
    VenueRateLimited,
    VenueRejected,
    VenueUnavailable,
    cancellable,
)
from workers.venues.http import answer, error_text, parse_time
from workers.venues.http_venue import as_far_as_known, read_after_placing
from workers.venues.options import compact, padded
from workers.venues.schwab.login import API_URL, TOKEN_PATH
from workers.venues.schwab.tokens import LOGIN_HINT, TokenStore, TokenStoreError, expiry_warning

log = structlog.get_logger("mbx.venues")
T = TypeVar("T")
logging.getLogger("schwab").setLevel(logging.WARNING)  # its debug lines carry whole bodies

LISTING_MARGIN = timedelta(seconds=5)
"""Widens the listing window: Schwab's entered times have whole seconds, clocks drift."""
EXPIRY_REREAD_S = 60.0
TOKEN_LEEWAY_S = 300
"""Renew the access token this long before it ends (as schwab-py does)."""

STATUSES: dict[str, OrderStatus] = {
    "FILLED": OrderStatus.FILLED,
    "CANCELED": OrderStatus.CANCELLED,
    "REPLACED": OrderStatus.CANCELLED,
    "REJECTED": OrderStatus.REJECTED,
    "EXPIRED": OrderStatus.EXPIRED,
}
"""Schwab's ended states; every other (WORKING, QUEUED, PENDING_CANCEL...) is still working."""
ORDER_TYPES = {
    OrderType.MARKET: "MARKET",
    OrderType.LIMIT: "LIMIT",
    OrderType.STOP: "STOP",
    OrderType.STOP_LIMIT: "STOP_LIMIT",
}
DURATIONS = {"day": "DAY", "gtc": "GOOD_TILL_CANCEL", "ioc": "IMMEDIATE_OR_CANCEL", "fok": "FILL_OR_KILL"}
ASSETS = {"EQUITY": AssetClass.EQUITY, "OPTION": AssetClass.OPTION, "ETF": AssetClass.EQUITY}


class RenewalRefused(VenueAuthFailed):
    """Schwab refused to renew the login (its seven days are over): only a new login helps."""


class RebasedTransport(httpx.AsyncBaseTransport):
    """Sends every request to ``base_url`` instead of the host schwab-py names (a fake broker)."""

    def __init__(self, base_url: str, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._target = httpx.URL(base_url)
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(scheme=self._target.scheme, host=self._target.host, port=self._target.port)
        request.headers["host"] = request.url.netloc.decode()
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class SchwabVenue:
    broker = BrokerName.SCHWAB

    def __init__(
        self,
        app_key: str,
        app_secret: str,
        store: TokenStore,
        *,
        account_number: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._app_key = app_key
        self._app_secret = app_secret
        self._store = store
        self._account_number = account_number
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
        if transport is None and base_url and base_url.rstrip("/") != API_URL:
            transport = RebasedTransport(base_url)
        self._transport = transport
        self._client: AsyncClient | None = None
        self._hash: str | None = None
        self._down_because = "not connected yet"
        self._expiry_read: tuple[float, datetime | None] = (-EXPIRY_REREAD_S, None)
        self._gate: RequestGate = OpenGate()

    def use_gate(self, gate: RequestGate) -> None:
        """Count every request against ``gate`` (the executor's rate budget), and tell it of 429s."""
        self._gate = gate

    @property
    def capabilities(self) -> VenueCapabilities:
        return CAPABILITIES[BrokerName.SCHWAB]

    def supported_assets(self) -> frozenset[AssetClass]:
        return frozenset(self.capabilities.assets)

    @property
    def is_connected(self) -> bool:
        return self._client is not None and not self._down_because

    @property
    def down_because(self) -> str:
        return self._down_because

    @property
    def warning(self) -> str:
        """A day before the login ends, what to do about it ("" until then). The store is read
        at most once a minute (the heartbeat asks every second)."""
        now = time.monotonic()
        if now - self._expiry_read[0] >= EXPIRY_REREAD_S:
            self._expiry_read = (now, self._store.expires_at())
        return expiry_warning(self._expiry_read[1])

    # The session --------------------------------------------------------------------------

    def _open(self) -> AsyncClient:
        """schwab-py's client over the stored login (read again after a refused renewal)."""
        if self._client is not None:
            return self._client
        try:
            metadata = TokenMetadata.from_loaded_token(self._store.read(), self._store.write)
        except (TokenStoreError, ValueError) as exc:
            self._down_because = str(exc)
            raise VenueAuthFailed(str(exc)) from None
        write = metadata.wrapped_token_write_func()

        async def update_token(token: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            write(token, *args, **kwargs)

        session = AsyncOAuth2Client(
            self._app_key,
            client_secret=self._app_secret,
            token=metadata.token,
            token_endpoint=API_URL + TOKEN_PATH,
            update_token=update_token,
            leeway=TOKEN_LEEWAY_S,
            transport=self._transport,
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10, keepalive_expiry=30.0),
        )
        client = AsyncClient(self._app_key, session, token_metadata=metadata)
        client.set_timeout(self._timeout)
        self._client = client
        return client

    async def connect(self) -> None:
        """Learn whether Schwab answers: one authenticated read every time (the executor's look
        at a broker that counts as down), not only the first, so a recovered Schwab counts as
        up again; the account's hash is resolved again on the way."""
        try:
            await self._account(refresh=True)
        except VenueUnavailable as exc:  # the executor starts anyway and keeps trying
            log.warning("broker not reachable yet", broker=str(self.broker), error=str(exc))

    async def disconnect(self) -> None:
        if self._client is not None:
            await self._client.close_async_session()
            self._client = None

    async def _drop_session(self) -> None:
        """Forget the session, so the next request reads the login again."""
        client, self._client = self._client, None
        if client is not None:
            await client.close_async_session()

    async def _call(
        self, method: str, path: str, call: Callable[[AsyncClient], Awaitable[httpx.Response]], *, renewed: bool = False
    ) -> httpx.Response:
        """One request through schwab-py; its failure or success updates ``down_because``. A
        401 (the access token ended early) renews the token once and asks again: a refused
        request did nothing, so asking again cannot double an order. Each request is counted
        against the rate budget first, and a 429 blocks the budget until the broker's reset."""
        client = self._open()
        await self._gate.take()
        try:
            response = await self._renewing(answer("schwab", method, path, call(client)))
        except RenewalRefused:
            raise
        except VenueAuthFailed as exc:  # a 401
            if not renewed:
                await self._renewing(client.session.refresh_token(API_URL + TOKEN_PATH))
                return await self._call(method, path, call, renewed=True)
            self._down_because = f"{exc}; {LOGIN_HINT}"
            await self._drop_session()
            raise VenueAuthFailed(self._down_because) from None
        except VenueRateLimited as exc:
            await self._gate.refused(exc.retry_after)
            raise  # up, but asking us to wait
        except VenueUnavailable as exc:
            self._down_because = str(exc)
            raise
        if response.status_code == 403:
            self._down_because = f"schwab: access refused (403): {error_text(response)}; {LOGIN_HINT}"
            raise VenueAuthFailed(self._down_because)
        self._down_because = ""
        return response

    async def _renewing(self, work: Awaitable[T]) -> T:
        """``work``, with authlib's renewal of the access token (before a request, or asked
        for) failing as a venue error: refused = the login is over; either way nothing was sent."""
        try:
            return await work
        except AuthlibBaseError as exc:
            self._down_because = (
                f"schwab: renewing the login was refused ({exc.error or type(exc).__name__}); {LOGIN_HINT}"
            )
            await self._drop_session()
            raise RenewalRefused(self._down_because) from None
        except httpx.HTTPStatusError as exc:
            self._down_because = f"schwab: renewing the login failed ({exc.response.status_code})"
            raise VenueUnavailable(self._down_because) from None
        except httpx.TransportError as exc:
            self._down_because = f"schwab: renewing the login got no answer ({type(exc).__name__})"
            raise VenueUnavailable(self._down_because) from None

    async def _account(self, *, refresh: bool = False) -> str:
        """The account's hash, which every later call names (resolved once, and again when
        ``refresh``)."""
        if self._hash is not None and not refresh:
            return self._hash
        response = await self._call("GET", "/accounts/accountNumbers", lambda c: c.get_account_numbers())
        response.raise_for_status()
        accounts = {str(a["accountNumber"]): str(a["hashValue"]) for a in response.json()}
        if self._account_number:
            chosen = accounts.get(self._account_number)
        else:
            chosen = next(iter(accounts.values())) if len(accounts) == 1 else None
        if chosen is None:
            endings = ", ".join(f"...{n[-4:]}" for n in sorted(accounts)) or "none"
            self._down_because = (
                f"schwab: the login reaches accounts {endings}; set brokers.schwab.account_number to the one to trade"
            )
            raise VenueUnavailable(self._down_because)
        self._hash = chosen
        return chosen

    # Orders -------------------------------------------------------------------------------

    async def place_order(self, intent: OrderIntent, client_order_id: str) -> VenueOrder:
        if intent.asset_class not in (AssetClass.EQUITY, AssetClass.OPTION):
            raise VenueRejected(
                "unsupported_asset", f"schwab's API does not trade {intent.asset_class}", order_specific=False
            )
        if intent.quantity is None or intent.quantity != intent.quantity.to_integral_value():
            raise VenueRejected(
                "unsupported_order",
                "schwab's API takes whole quantities only (no fractions, no amounts)",
                order_specific=False,
            )
        account = await self._account()
        spec = order_request(intent)
        response = await self._call("POST", "/orders", lambda c: c.place_order(account, spec))
        if response.status_code == 201:
            order_id = Utils(self._client, account).extract_order_id(response)
            if order_id is None:
                raise VenueAmbiguous("schwab accepted the order but named no order id; looking it up")
            order = await read_after_placing(lambda: self.get_order(str(order_id)), "schwab")
            if order is None:
                raise VenueAmbiguous(f"schwab accepted order {order_id} but does not list it yet")
            return order
        why = error_text(response)
        if response.status_code in (400, 422):
            money = any(word in why.lower() for word in ("buying power", "insufficient", "available cash"))
            raise VenueRejected(
                "insufficient_buying_power" if money else "invalid_order", f"schwab: {why}", order_specific=not money
            )
        raise VenueRejected(f"http_{response.status_code}", f"schwab: {why}", order_specific=True)

    async def locate(
        self, intent: OrderIntent, client_order_id: str, since: datetime, exclude: frozenset[str] = frozenset()
    ) -> VenueOrder | None:
        """The earliest order entered since ``since`` of this intent's shape, skipping the
        orders in ``exclude`` (other intents')."""
        account = await self._account()
        start, end = since - LISTING_MARGIN, datetime.now(UTC) + LISTING_MARGIN
        response = await self._call(
            "GET",
            "/orders",
            lambda c: c.get_orders_for_account(account, from_entered_datetime=start, to_entered_datetime=end),
        )
        response.raise_for_status()
        wanted = order_request(intent)
        found = [
            data for data in response.json() if str(data.get("orderId")) not in exclude and same_shape(data, wanted)
        ]
        if not found:
            return None
        return parse_order(min(found, key=lambda d: (str(d.get("enteredTime")), int(d["orderId"]))))

    async def get_order(self, broker_order_id: str) -> VenueOrder | None:
        if not broker_order_id.isdigit():
            return None  # not a Schwab order id
        account = await self._account()
        path = f"/orders/{broker_order_id}"
        response = await self._call("GET", path, lambda c: c.get_order(int(broker_order_id), account))
        if response.status_code in (400, 404):
            return None
        response.raise_for_status()
        return parse_order(response.json())

    async def cancel_order(self, broker_order_id: str) -> VenueOrder:
        order = cancellable(await self.get_order(broker_order_id), "schwab", broker_order_id)
        account = await self._account()
        response = await self._call(
            "DELETE", f"/orders/{broker_order_id}", lambda c: c.cancel_order(int(broker_order_id), account)
        )
        after = await self.get_order(broker_order_id) or order
        if response.status_code not in (200, 204):
            if after.status.is_terminal:
                raise VenueRejected(
                    "too_late_to_cancel", f"order {broker_order_id} is already {after.status}", order_specific=True
                )
            raise VenueRejected(f"http_{response.status_code}", f"schwab: {error_text(response)}", order_specific=True)
        return after

    # Account ------------------------------------------------------------------------------

    async def _securities_account(self, positions: bool) -> dict[str, Any]:
        account = await self._account()
        fields = [AsyncClient.Account.Fields.POSITIONS] if positions else None
        response = await self._call("GET", "/accounts/{hash}", lambda c: c.get_account(account, fields=fields))
        response.raise_for_status()
        body: dict[str, Any] = response.json().get("securitiesAccount") or {}
        return body

    async def get_account(self) -> AccountSnapshot:
        account = await self._securities_account(positions=False)
        balances = account.get("currentBalances") or {}
        cash = _decimal(balances.get("cashBalance"))
        number = str(account.get("accountNumber") or "")
        return AccountSnapshot(
            account_id=f"schwab-...{number[-4:]}" if number else "schwab",
            currency="USD",
            cash=cash,
            buying_power=_decimal(balances.get("buyingPower", cash)),
            portfolio_value=_decimal(balances.get("liquidationValue", cash)),
        )

    async def get_positions(self) -> list[PositionLine]:
        account = await self._securities_account(positions=True)
        lines = []
        for held in account.get("positions") or []:
            instrument = held.get("instrument") or {}
            asset = ASSETS.get(str(instrument.get("assetType")))
            quantity = _decimal(held.get("longQuantity")) - _decimal(held.get("shortQuantity"))
            if asset is None or quantity == 0:
                continue  # cash sweeps, mutual funds: not traded here
            value = _decimal(held.get("marketValue"))
            multiplier = 100 if asset is AssetClass.OPTION else 1
            profit = held.get("longOpenProfitLoss") if quantity > 0 else held.get("shortOpenProfitLoss")
            lines.append(
                PositionLine(
                    symbol=compact(str(instrument.get("symbol") or "")),
                    asset_class=asset,
                    quantity=quantity,
                    average_cost=_decimal(held.get("averagePrice")),
                    market_price=value / (quantity * multiplier),
                    market_value=value,
                    unrealized_pnl=_decimal(profit),
                )
            )
        return lines


def _decimal(value: Any) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else Decimal(0)


def schwab_symbol(intent: OrderIntent) -> str:
    """Schwab writes option symbols with the root padded to six characters (``AAPL  261218C00190000``)."""
    return (
        padded(intent.symbol) if intent.asset_class is AssetClass.OPTION and is_option(intent.symbol) else intent.symbol
    )


def instruction(intent: OrderIntent) -> str:
    """BUY/SELL for equities; options open on a buy and close on a sell unless the intent's
    ``metadata.position_effect`` says ``open`` or ``close``."""
    side = str(intent.side).upper()
    if intent.asset_class is not AssetClass.OPTION:
        return side
    effect = str(intent.metadata.get("position_effect", "open" if side == "BUY" else "close")).upper()
    return f"{side}_TO_{'CLOSE' if effect == 'CLOSE' else 'OPEN'}"


def order_request(intent: OrderIntent) -> dict[str, Any]:
    """The order as schwab-py's builders write it (prices as strings, whole quantities)."""
    quantity = intent.quantity if intent.quantity is not None else Decimal(0)
    body: dict[str, Any] = {
        "session": "NORMAL",
        "duration": DURATIONS.get(str(intent.time_in_force), "DAY"),
        "orderType": ORDER_TYPES[intent.order_type],
        "orderStrategyType": "SINGLE",
        "orderLegCollection": [
            {
                "instruction": instruction(intent),
                "quantity": int(quantity),
                "instrument": {
                    "symbol": schwab_symbol(intent),
                    "assetType": "OPTION" if intent.asset_class is AssetClass.OPTION else "EQUITY",
                },
            }
        ],
    }
    if intent.limit_price is not None:
        body["price"] = str(intent.limit_price)
    if intent.stop_price is not None:
        body["stopPrice"] = str(intent.stop_price)
    return body


def same_shape(data: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """A listed order has the shape of the request: symbol, instruction, quantity, type, prices."""
    try:
        [leg] = data["orderLegCollection"]
        [want] = wanted["orderLegCollection"]
        return (
            compact(str(leg["instrument"]["symbol"])) == compact(want["instrument"]["symbol"])
            and leg["instruction"] == want["instruction"]
            and _decimal(data.get("quantity")) == want["quantity"]
            and data.get("orderType") == wanted["orderType"]
            and _price(data.get("price")) == _price(wanted.get("price"))
            and _price(data.get("stopPrice")) == _price(wanted.get("stopPrice"))
        )
    except (KeyError, ValueError, TypeError):
        return False  # a multi-leg order, or one mbx did not place


def _price(value: Any) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value))


def parse_order(data: dict[str, Any]) -> VenueOrder:
    order_id = str(data["orderId"])
    leg = (data.get("orderLegCollection") or [{}])[0]
    instrument = leg.get("instrument") or {}
    asset = ASSETS.get(str(instrument.get("assetType")), AssetClass.EQUITY)
    fills = []
    for activity in data.get("orderActivityCollection") or []:
        if activity.get("activityType") != "EXECUTION" or activity.get("executionType") != "FILL":
            continue
        for n, execution in enumerate(activity.get("executionLegs") or [], start=1):
            size, price = _decimal(execution.get("quantity")), _decimal(execution.get("price"))
            fills.append(
                VenueFill(
                    fill_id=f"{order_id}-{activity.get('activityId')}-{n}",
                    quantity=size,
                    price=price,
                    fee=fee(asset, size, price),
                    executed_at=parse_time(execution.get("time")) or datetime.now(UTC),
                )
            )
    filled = _decimal(data.get("filledQuantity"))
    known = sum((f.quantity for f in fills), Decimal(0))
    status = STATUSES.get(str(data.get("status")), OrderStatus.ACCEPTED)
    if status is OrderStatus.ACCEPTED and filled > 0:
        status = OrderStatus.PARTIALLY_FILLED
    order = VenueOrder(
        broker_order_id=order_id,
        client_order_id="",
        status=status,
        quantity=_decimal(data.get("quantity")),
        symbol=compact(str(instrument.get("symbol") or "")),
        side="buy" if str(leg.get("instruction", "")).startswith("BUY") else "sell",
        asset_class=str(asset),
        limit_price=_price(data.get("price")),
        submitted_at=parse_time(data.get("enteredTime")),
        filled_quantity=filled,
        average_price=sum((f.quantity * f.price for f in fills), Decimal(0)) / known if known else None,
        fees=sum((f.fee for f in fills), Decimal(0)),
        fills=fills,
        reason=str(data.get("statusDescription") or ""),
    )
    return as_far_as_known(order)


def fee(asset: AssetClass, quantity: Decimal, price: Decimal) -> Decimal:
    """Schwab lists no commission with an order: its published schedule ($0.65 a contract)."""
    schedule = DEFAULT_FEES[BrokerName.SCHWAB].get(asset)
    return round_up_to_cent(commission(schedule, asset, quantity, price)) if schedule else Decimal(0)
