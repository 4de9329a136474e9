"""Interactive Brokers through ib_async, to a running TWS or IB Gateway.

One long-lived API connection per executor (``host``, ``port``, ``client_id``), reconnected
with backoff when it drops. Only ib_async's asynchronous calls are used; ib_async paces what it
sends (one message every 1/40 s, below TWS's 50 a second). ``orderRef`` carries the intent id,
and the order id is recorded before the order is sent (``order_ids.py``), so a resubmission
reuses it and the gateway refuses a second one (error 103, a duplicate: looked up). Each (re)connection
runs ib_async's start-up synchronisation (open and completed orders, executions), and the
executor then settles its working orders (``SupportsUpdates``): fills made while the
connection was away are not lost; so after 1101/1102, when TWS had lost IB (1100) and pushes
nothing of what happened meanwhile. Order changes arrive as TWS pushes them.

Error codes: 100 (pacing) is a 429; 103 a duplicate; 200 (no such contract) and 201 (order
rejected) refusals, 201 for margin one another broker may take; 1100 (TWS lost IB) takes the
broker down until 1101/1102.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog
from ib_async import IB, Contract, Crypto, LimitOrder, MarketOrder, Order, Stock, StopLimitOrder, StopOrder, Trade
from ib_async.ib import StartupFetch
from ib_async.order import OrderStatus as IbStatus

from contracts import AccountSnapshot, AssetClass, BrokerName, OrderIntent, OrderStatus, OrderType, PositionLine
from workers.domain.capabilities import CAPABILITIES, VenueCapabilities
from workers.domain.instruments import asset_class_of
from workers.domain.venue import (
    OpenGate,
    RequestGate,
    VenueAmbiguous,
    VenueAuthFailed,
    VenueDuplicate,
    VenueError,
    VenueFill,
    VenueOrder,
    VenueRateLimited,
    VenueRejected,
    VenueUnavailable,
    cancellable,
)
from workers.venues.http_venue import as_far_as_known
from workers.venues.ibkr.order_ids import OrderIds
from workers.venues.options import compact, padded

log = structlog.get_logger("mbx.venues")
logging.getLogger("ib_async.client").setLevel(logging.CRITICAL)  # every failed reconnect; the heartbeat says why
logging.getLogger("ib_async.wrapper").setLevel(logging.WARNING)  # every order's every update at INFO

PAPER_PORTS = (7497, 4002)
MESSAGES_PER_SECOND = 40
"""ib_async sends one message every 1/40 s at most. TWS counts 50 in any second as the messages
arrive: ib_async's own way (45 a second, each second's let go at once) lands two seconds' worth
within one second at the gateway whenever the first is read a little late; evenly spaced at 40,
messages read up to a quarter of a second late still make no 50 in a second."""
PACING_PAUSE_S = 1.0
"""How long the rate budget pauses after a pacing violation (error 100 names no reset time)."""
RECONNECT_BACKOFF = (0.5, 30.0)
SYNC = StartupFetch.POSITIONS | StartupFetch.ORDERS_OPEN | StartupFetch.ORDERS_COMPLETE | StartupFetch.EXECUTIONS
SYNC |= StartupFetch.ACCOUNT_UPDATES
UNSET = 1.7976931348623157e308  # ib_async's UNSET_DOUBLE

MARGIN_WORDS = ("margin", "buying power", "equity with loan", "insufficient")
LOST, RESTORED = 1100, (1101, 1102)
DUPLICATE_ID, PACING, NO_CONTRACT, REJECTED = 103, 100, 200, 201
TIME_IN_FORCE = {"day": "DAY", "gtc": "GTC", "ioc": "IOC", "fok": "FOK"}


class IbkrVenue:
    broker = BrokerName.IBKR

    def __init__(
        self,
        host: str,
        port: int,
        client_id: int,
        order_ids: OrderIds,
        *,
        timeout_s: float = 10.0,
        paper: bool = True,
        make_ib: Callable[[], IB] | None = None,
    ) -> None:
        self._host, self._port, self._client_id = host, port, client_id
        self._ids = order_ids
        self._timeout_s = timeout_s
        self._paper = paper
        self._ib = (make_ib or IB)()
        self._ib.client.MaxRequests = 1
        # ib_async declares an int; its throttle does float arithmetic with the event loop's clock.
        self._ib.client.RequestsInterval = 1 / MESSAGES_PER_SECOND  # type: ignore[assignment]
        self._ib.errorEvent += self._on_error
        self._ib.disconnectedEvent += self._on_disconnect
        self._down_because = "not connected yet"
        self._lost = ""
        """Why TWS has no connection to IB (error 1100), until 1101/1102."""
        self._syncing = asyncio.Lock()
        """Held while a connection synchronises or a refresh runs (see ``_refresh``)."""
        self._refreshes = 0
        self._settling: set[asyncio.Future[None]] = set()
        self._closing = False
        self._reconnect: asyncio.Task[None] | None = None
        self._connected_callbacks: list[Callable[[], Awaitable[None]]] = []
        self._gate: RequestGate = OpenGate()
        self._pacing: set[asyncio.Task[None]] = set()

    def use_gate(self, gate: RequestGate) -> None:
        """Count every message sent to TWS (an order, a cancel, each request of a refresh)
        against ``gate`` (the executor's rate budget), and tell it of pacing violations."""
        self._gate = gate

    @property
    def capabilities(self) -> VenueCapabilities:
        return CAPABILITIES[BrokerName.IBKR]

    def supported_assets(self) -> frozenset[AssetClass]:
        return frozenset(self.capabilities.assets)

    @property
    def is_connected(self) -> bool:
        return self._ib.isConnected() and not self._lost

    @property
    def down_because(self) -> str:
        if self._lost:
            return self._lost
        return "" if self._ib.isConnected() else self._down_because

    # The connection -----------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, or, connected, take in what the gateway has sent (an 1102 saying IB is back
        is what brings a lost broker up: the executor's look at a down broker is this call)."""
        await asyncio.sleep(0)
        try:
            await self._ensure_connected()
        except VenueUnavailable as exc:  # the executor starts anyway; the venue keeps trying
            log.warning("broker not reachable yet", broker=str(self.broker), error=str(exc))
            self._start_reconnecting()

    async def disconnect(self) -> None:
        self._closing = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        self._ib.disconnect()

    async def _ensure_connected(self) -> IB:
        """The connected IB (connecting now if it is not), or VenueUnavailable."""
        if self._ib.isConnected() and not self._syncing.locked():
            return self._ib
        async with self._syncing:
            if self._ib.isConnected():
                return self._ib
            try:
                await self._ib.connectAsync(
                    self._host, self._port, clientId=self._client_id, timeout=self._timeout_s, fetchFields=SYNC
                )
            except (OSError, TimeoutError, ConnectionError) as exc:
                self._down_because = (
                    f"ibkr: no API connection to {self._host}:{self._port} ({type(exc).__name__}: {exc}); "
                    "is TWS or IB Gateway running and logged in, with API connections enabled?"
                )
                raise VenueUnavailable(self._down_because) from None
            live = [a for a in self._ib.managedAccounts() if not a.startswith("D")]
            if self._paper and live:
                self._closing = True
                self._ib.disconnect()
                self._closing = False
                self._down_because = (
                    f"ibkr: paper_trading is set but the gateway at {self._host}:{self._port} is logged in to live "
                    f"account {live[0][:2]}...{live[0][-2:]}; log it in to the paper account, "
                    "or set paper_trading: false"
                )
                raise VenueUnavailable(self._down_because)
            self._down_because = ""
            log.info("broker connected", broker=str(self.broker), host=self._host, port=self._port)
        self._settle()
        return self._ib

    def _settle(self) -> None:
        """Run the connected callbacks: the executor settles its working orders."""
        for callback in list(self._connected_callbacks):
            self._keep(asyncio.ensure_future(callback()))

    def _keep(self, task: asyncio.Future[None]) -> None:
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _catch_up(self) -> None:
        """IB is back (1101/1102) after TWS was cut off from it (1100): TWS pushes nothing of what
        happened at IB meanwhile (fills of working orders among it), then or after. Ask for it
        (open and completed orders, executions), then let the executor settle its orders."""
        try:
            await self._refresh()
        except (VenueError, TimeoutError, ConnectionError) as exc:  # the next reconnection synchronises
            log.warning(
                "orders not read after IB came back", broker=str(self.broker), error=f"{type(exc).__name__}: {exc}"
            )
        self._settle()

    def _on_disconnect(self) -> None:
        if self._closing:
            return
        self._down_because = f"ibkr: the connection to {self._host}:{self._port} dropped; reconnecting"
        log.warning("broker connection lost; reconnecting", broker=str(self.broker))
        self._start_reconnecting()

    def _start_reconnecting(self) -> None:
        if self._closing or (self._reconnect is not None and not self._reconnect.done()):
            return
        self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_with_backoff())

    async def _reconnect_with_backoff(self) -> None:
        pause = RECONNECT_BACKOFF[0]
        while not self._closing and not self._ib.isConnected():
            await asyncio.sleep(pause)
            with contextlib.suppress(VenueUnavailable):
                await self._ensure_connected()
            pause = min(pause * 2, RECONNECT_BACKOFF[1])

    def _on_error(self, req_id: int, code: int, text: str, contract: Any) -> None:
        if code == PACING:  # error 100, whatever request caused it: the budget pauses
            paused = asyncio.get_running_loop().create_task(self._gate.refused(PACING_PAUSE_S))
            self._pacing.add(paused)
            paused.add_done_callback(self._pacing.discard)
        if code == LOST:
            self._lost = _lost_text(text)
            log.error("broker down", broker=str(self.broker), reason=self._lost)
        elif code in RESTORED and self._lost:
            self._lost = ""
            self._keep(asyncio.get_running_loop().create_task(self._catch_up()))

    async def _ready(self) -> IB:
        await asyncio.sleep(0)  # take in what the gateway already sent (an error 1100, a fill)
        ib = await self._ensure_connected()
        if self._lost:
            raise VenueAuthFailed(self._lost)
        return ib

    # Orders -------------------------------------------------------------------------------

    async def place_order(self, intent: OrderIntent, client_order_id: str) -> VenueOrder:
        ib = await self._ready()
        known = self._trade_by_ref(client_order_id)
        if known is not None and not _refused(known):
            raise VenueDuplicate(f"ibkr already has order {known.order.orderId} for {client_order_id}")
        await self._gate.take()  # before an order id is given out: a refusal sends nothing
        order_id = await self._ids.of_intent(client_order_id)
        if order_id is None or (known is not None and _refused(known)):
            # A new id, recorded before it is sent; one refused before it became an order is not reused.
            order_id = await self._ids.assign(client_order_id, ib.client.getReqId())
        ib.client.updateReqId(order_id + 1)  # type: ignore[no-untyped-call]
        order = order_for(intent, order_id, client_order_id)
        trade = ib.placeOrder(contract_for(intent), order)
        await self._answered(trade, lambda t: t.orderStatus.status != IbStatus.PendingSubmit)
        if not self._ib.isConnected():
            raise VenueAmbiguous(f"ibkr: the connection dropped before order {order_id} was answered")
        if trade.orderStatus.status == IbStatus.PendingSubmit:
            raise VenueAmbiguous(f"ibkr: order {order_id} got no answer within {self._timeout_s:g}s")
        error = _error(trade)
        if error is not None and trade.orderStatus.status in IbStatus.DoneStates and not trade.fills:
            raise _refusal(order_id, *error)
        return venue_order(trade)

    async def _answered(self, trade: Trade, settled: Callable[[Trade], bool]) -> None:
        """Wait until ``settled`` holds, the connection drops or the deadline passes."""
        changed = asyncio.Event()

        def wake(*_: Any) -> None:
            changed.set()

        trade.statusEvent += wake
        self._ib.disconnectedEvent += wake
        try:
            async with asyncio.timeout(self._timeout_s):
                while not settled(trade) and self._ib.isConnected():
                    changed.clear()
                    await changed.wait()
        except TimeoutError:
            pass  # the caller says what is still unknown
        finally:
            trade.statusEvent -= wake
            self._ib.disconnectedEvent -= wake

    def _trade_by_ref(self, client_order_id: str) -> Trade | None:
        return _best(t for t in self._ib.trades() if t.order.orderRef == client_order_id)

    def _trade_by_id(self, order_id: int) -> Trade | None:
        return _best(t for t in self._ib.trades() if t.order.orderId == order_id)

    async def locate(
        self, intent: OrderIntent, client_order_id: str, since: datetime, exclude: frozenset[str] = frozenset()
    ) -> VenueOrder | None:
        await self._ready()
        trade = self._trade_by_ref(client_order_id)
        if trade is None or _refused(trade):
            await self._refresh()
            trade = self._trade_by_ref(client_order_id)
        return venue_order(trade) if trade is not None and not _refused(trade) else None

    async def _refresh(self) -> None:
        """Ask the gateway for every open and completed order and the day's executions: one
        refresh at a time (ib_async files each of these answers under one fixed key, so two at
        once would leave one waiting forever), and none while a connection is synchronising; a
        caller takes a refresh that began after it asked."""
        ib = await self._ready()
        wanted = self._refreshes + 1
        async with self._syncing:
            if self._refreshes >= wanted:
                return  # one began after this caller asked, and has finished
            self._refreshes += 1
            await self._gate.take()
            await asyncio.wait_for(ib.reqAllOpenOrdersAsync(), self._timeout_s)
            await self._gate.take()
            completed = await asyncio.wait_for(ib.reqCompletedOrdersAsync(apiOnly=True), self._timeout_s)
            _end_known(self._ib.trades(), completed)
            await self._gate.take()
            await asyncio.wait_for(ib.reqExecutionsAsync(), self._timeout_s)

    async def get_order(self, broker_order_id: str) -> VenueOrder | None:
        if not broker_order_id.isdigit():
            return None
        await self._ready()
        trade = self._trade_by_id(int(broker_order_id))
        if trade is None:
            await self._refresh()
            trade = self._trade_by_id(int(broker_order_id))
            intent = await self._ids.intent_of(int(broker_order_id)) if trade is None else None
            trade = self._trade_by_ref(intent) if intent else trade
        return venue_order(trade) if trade is not None and not _refused(trade) else None

    async def cancel_order(self, broker_order_id: str) -> VenueOrder:
        cancellable(await self.get_order(broker_order_id), "ibkr", broker_order_id)
        ib = await self._ready()
        trade = self._trade_by_id(int(broker_order_id))
        if trade is None:
            raise VenueAmbiguous(f"ibkr: order {broker_order_id} is known but not to this connection yet")
        await self._gate.take()
        ib.cancelOrder(trade.order)
        await self._answered(trade, lambda t: t.orderStatus.status in IbStatus.DoneStates)
        after = venue_order(trade)
        if trade.orderStatus.status == IbStatus.Filled:
            raise VenueRejected(
                "too_late_to_cancel", f"order {broker_order_id} is already {after.status}", order_specific=True
            )
        return after

    # Account ------------------------------------------------------------------------------

    async def get_account(self) -> AccountSnapshot:
        ib = await self._ready()
        values = {(v.tag, v.currency): v.value for v in ib.accountValues()}
        cash = _decimal(values.get(("TotalCashValue", "USD")))
        accounts = ib.managedAccounts()
        return AccountSnapshot(
            account_id=accounts[0] if accounts else "ibkr",
            currency="USD",
            cash=cash,
            buying_power=_decimal(values.get(("BuyingPower", "USD"), cash)),
            portfolio_value=_decimal(values.get(("NetLiquidation", "USD"), cash)),
        )

    async def get_positions(self) -> list[PositionLine]:
        ib = await self._ready()
        lines = []
        for item in ib.portfolio():
            asset = ASSET_OF.get(item.contract.secType)
            if asset is None or item.position == 0:
                continue
            multiplier = Decimal(100) if asset is AssetClass.OPTION else Decimal(1)
            lines.append(
                PositionLine(
                    symbol=symbol_of(item.contract),
                    asset_class=asset,
                    quantity=_decimal(item.position),
                    average_cost=_decimal(item.averageCost) / multiplier,
                    market_price=_decimal(item.marketPrice),
                    market_value=_decimal(item.marketValue),
                    unrealized_pnl=_decimal(item.unrealizedPNL),
                )
            )
        return lines

    # Pushed changes -----------------------------------------------------------------------

    async def stream_updates(
        self, on_order: Callable[[VenueOrder], Awaitable[None]], on_connect: Callable[[], Awaitable[None]]
    ) -> None:
        """TWS pushes order changes on the one connection: each is passed on whole; after every
        (re)connection ``on_connect`` runs, for the executor to settle what changed meanwhile."""
        changed: asyncio.Queue[Trade] = asyncio.Queue()

        def note(trade: Trade, *_: Any) -> None:
            changed.put_nowait(trade)

        self._ib.orderStatusEvent += note
        self._ib.execDetailsEvent += note
        self._ib.commissionReportEvent += note
        self._connected_callbacks.append(on_connect)
        try:
            if self._ib.isConnected():
                await on_connect()
            while True:
                trade = await changed.get()
                if trade.order.orderRef and not _refused(trade):
                    await on_order(venue_order(trade))
        finally:
            self._ib.orderStatusEvent -= note
            self._ib.execDetailsEvent -= note
            self._ib.commissionReportEvent -= note
            self._connected_callbacks.remove(on_connect)


# Translation ---------------------------------------------------------------------------------

ASSET_OF = {"STK": AssetClass.EQUITY, "OPT": AssetClass.OPTION, "CRYPTO": AssetClass.CRYPTO}


def _decimal(value: Any) -> Decimal:
    if value in (None, "") or (isinstance(value, float) and (math.isnan(value) or value >= UNSET)):
        return Decimal(0)
    return Decimal(str(value))


def contract_for(intent: OrderIntent) -> Contract:
    return contract_of(intent.symbol, intent.asset_class)


def contract_of(symbol: str, asset: AssetClass) -> Contract:
    if asset is AssetClass.CRYPTO:
        base, _, quote = symbol.partition("-")
        return Crypto(base, "PAXOS", quote or "USD")
    if asset is AssetClass.OPTION:
        return Contract(secType="OPT", localSymbol=padded(symbol), exchange="SMART", currency="USD")
    return Stock(symbol, "SMART", "USD")


def contract_of_symbol(symbol: str) -> Contract:
    """The contract a bare symbol names (``asset_class_of``)."""
    return contract_of(symbol, asset_class_of(symbol))


def symbol_of(contract: Contract) -> str:
    if contract.secType == "CRYPTO":
        return f"{contract.symbol}-{contract.currency}"
    if contract.secType == "OPT":
        return compact(contract.localSymbol)
    return str(contract.symbol)


def order_for(intent: OrderIntent, order_id: int, client_order_id: str) -> Order:
    action = str(intent.side).upper()
    quantity = float(intent.quantity) if intent.quantity is not None else 0.0
    common: dict[str, Any] = {
        "orderId": order_id,
        "orderRef": client_order_id,
        "tif": TIME_IN_FORCE.get(str(intent.time_in_force), "DAY"),
    }
    if intent.quantity is None and intent.notional is not None:
        common["cashQty"] = float(intent.notional)  # IB crypto buys by amount
    if intent.order_type is OrderType.LIMIT:
        return LimitOrder(action, quantity, float(intent.limit_price or 0), **common)
    if intent.order_type is OrderType.STOP:
        return StopOrder(action, quantity, float(intent.stop_price or 0), **common)
    if intent.order_type is OrderType.STOP_LIMIT:
        return StopLimitOrder(action, quantity, float(intent.limit_price or 0), float(intent.stop_price or 0), **common)
    return MarketOrder(action, quantity, **common)


def _best(trades: Iterable[Trade]) -> Trade | None:
    """Of the records of one order, the one the gateway told most about (a record made when it
    was sent may outlive the connection it was sent on)."""
    return max(trades, key=lambda t: (bool(t.order.permId), len(t.fills)), default=None)


def _end_known(known: Iterable[Trade], completed: Iterable[Trade]) -> None:
    """End the records this connection keeps of orders TWS now lists as completed: ib_async files
    a completed order apart and leaves its record of the order as it last heard of it (working),
    which is all a read of the order then finds."""
    ended = {t.order.permId: t for t in completed if t.order.permId}
    for trade in known:
        done = ended.get(trade.order.permId)
        if done is None or done is trade or trade.isDone():
            continue
        trade.orderStatus.status = done.orderStatus.status
        trade.orderStatus.remaining = 0.0
        if _decimal(done.order.filledQuantity) > _decimal(trade.order.filledQuantity):
            trade.order.filledQuantity = done.order.filledQuantity


def _error(trade: Trade) -> tuple[int, str] | None:
    """The last error TWS logged on the order (code, text)."""
    for entry in reversed(trade.log):
        if entry.errorCode:
            return entry.errorCode, entry.message
    return None


def _refused(trade: Trade) -> bool:
    """Refused before it became an order (no permId, nothing filled): it does not exist at IB."""
    return trade.orderStatus.status in IbStatus.DoneStates and not trade.order.permId and not trade.fills


def _lost_text(text: str) -> str:
    return f"ibkr: TWS lost its connection to IB (error {LOST}: {text}); check its login"


def _refusal(order_id: int, code: int, text: str) -> Exception:
    if code == LOST:
        return VenueAuthFailed(_lost_text(text))
    if code == DUPLICATE_ID:
        return VenueDuplicate(f"ibkr: order id {order_id} was used before (error 103): {text}")
    if code == PACING:
        return VenueRateLimited(f"ibkr: pacing violation (error 100): {text}", retry_after=PACING_PAUSE_S)
    if code == REJECTED and any(word in text.lower() for word in MARGIN_WORDS):
        return VenueRejected("insufficient_buying_power", f"ibkr: {text}", order_specific=False)
    if code == NO_CONTRACT:
        return VenueRejected("invalid_order", f"ibkr: {text}", order_specific=True)
    return VenueRejected(f"ib_error_{code}", f"ibkr: {text}", order_specific=True)


STATUS = {
    IbStatus.Filled: OrderStatus.FILLED,
    IbStatus.Cancelled: OrderStatus.CANCELLED,
    IbStatus.ApiCancelled: OrderStatus.CANCELLED,
    IbStatus.Inactive: OrderStatus.REJECTED,
}


def venue_order(trade: Trade) -> VenueOrder:
    order, contract = trade.order, trade.contract
    fills = [
        VenueFill(
            fill_id=f.execution.execId,
            quantity=_decimal(f.execution.shares),
            price=_decimal(f.execution.price),
            fee=_decimal(f.commissionReport.commission),
            executed_at=f.execution.time if f.execution.time.tzinfo else f.execution.time.replace(tzinfo=UTC),
        )
        for f in trade.fills
    ]
    known = sum((f.quantity for f in fills), Decimal(0))
    filled = max(_decimal(trade.orderStatus.filled), _decimal(order.filledQuantity), known)
    status = STATUS.get(trade.orderStatus.status, OrderStatus.ACCEPTED)
    if status is OrderStatus.ACCEPTED and filled > 0:
        status = OrderStatus.PARTIALLY_FILLED
    error = _error(trade)
    result = VenueOrder(
        broker_order_id=str(order.orderId),
        client_order_id=order.orderRef,
        status=status,
        quantity=_decimal(order.totalQuantity) or filled,
        symbol=symbol_of(contract),
        side="buy" if order.action == "BUY" else "sell",
        asset_class=str(ASSET_OF.get(contract.secType, AssetClass.EQUITY)),
        limit_price=_decimal(order.lmtPrice) or None if order.orderType in ("LMT", "STP LMT") else None,
        submitted_at=trade.log[0].time if trade.log else None,
        filled_quantity=filled,
        average_price=sum((f.quantity * f.price for f in fills), Decimal(0)) / known if known else None,
        fees=sum((f.fee for f in fills), Decimal(0)),
        fills=fills,
        reason=f"error {error[0]}: {error[1]}" if error and status is not OrderStatus.FILLED else "",
    )
    return as_far_as_known(result)
