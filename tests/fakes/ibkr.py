"""A fake TWS / IB Gateway at ib_async's client layer, for the IBKR adapter's tests: no socket,
no live gateway.

``FakeIbClient`` replaces ``ib_async.Client`` inside a real ``ib_async.IB``: the requests IB
sends (placeOrder, cancelOrder, reqIds, open, completed and executions requests, positions,
account updates) are answered by calling the wrapper's callbacks (openOrder, orderStatus,
execDetails, commissionReport, nextValidId, error...), each on a later turn of the event loop,
as a socket would deliver them. ``FakeGateway`` is the state behind it, which outlives a
client's connection like a real gateway's: orders by order id (a reused id is error 103),
executions with commission reports, positions, cash, and ``next_valid_id``, which rolls back
after ``restart`` as a real gateway's does.

Faults: the other fakes' (``FakeFaults``), as IB shows them: ``outage`` (connections refused,
the connected client dropped: the gateway is not logged in), ``timeouts_after_accept`` and
``server_errors_after_accept`` (the order is taken, then the connection drops before any
answer), ``server_errors_next`` (the connection drops as the order arrives, before the gateway
reads it: nothing is done, and the client cannot tell), ``reject_next`` (error 201, margin),
unknown symbols (error 200), ``rate_limited_next`` and ``rate_limited_orders_next`` (error 100,
pacing: the message is dropped), ``auth_expired`` (error 1100: the gateway lost IB; 1102 when it
is back; nothing that happened meanwhile is pushed, as ib_async's users report: a client must
ask), ``slow_replies`` (the next orders' answers come ``slow_reply_s`` late), ``pending_new_next``
(the next resting orders stay ``PreSubmitted`` for ``pending_new_s``), ``lot_size``.

Pacing (``message_limit``, off unless set): TWS takes at most 50 messages a second from an API
client; the gateway counts each client's messages over a rolling second (``MessageRate``) and
answers the ones past the limit with error 100, dropping them. ``end_day``/``next_day``: IB has
no ``done_for_day``; at the close working DAY orders are cancelled and GTC ones are held
(``PreSubmitted``) until the next day's open, when they work (``Submitted``) again.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import itertools
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ib_async import IB, Client, CommissionReport, Contract, ContractDetails, Execution, Order, OrderState

from tests.fakes.alpaca import FakeFaults
from workers.venues.simulated.quotes import QuoteModel

ACCOUNT = "DU1234567"
STOCK_COMMISSION = Decimal("0.005")  # per share, at least 1 USD (IBKR Pro Fixed)


def quote_symbol(contract: Contract) -> str:
    if contract.secType == "CRYPTO":
        return f"{contract.symbol}-{contract.currency}"
    return contract.localSymbol.replace(" ", "") if contract.secType == "OPT" else contract.symbol


PACING_TEXT = "Max rate of messages per second has been exceeded"
LOST_TEXT = "Connectivity between IB and Trader Workstation has been lost."
RESTORED_TEXT = "Connectivity between IB and Trader Workstation has been restored - data maintained."


@dataclass
class MessageRate:
    """TWS's pacing of one API client: at most ``limit`` messages in any rolling second (TWS
    API docs: 50 a second from the client, what TWS sends it not counted; past it error 100,
    and a client that keeps at it is disconnected, which is not modelled)."""

    limit: int = 50
    per_seconds: float = 1.0
    messages: int = 0
    peak: int = 0
    """The most messages seen in one rolling second (refused ones included)."""
    refused: int = 0
    """Messages answered with error 100 because the client exceeded the limit."""
    _times: deque[float] = field(default_factory=deque)

    def admit(self, now: float | None = None) -> bool:
        """Count one message; False when it is past the limit (error 100, dropped)."""
        now = time.monotonic() if now is None else now
        while self._times and now - self._times[0] >= self.per_seconds:
            self._times.popleft()
        self._times.append(now)
        self.messages += 1
        self.peak = max(self.peak, len(self._times))
        if len(self._times) > self.limit:
            self.refused += 1
            return False
        return True


@dataclass
class GatewayOrder:
    client_id: int
    contract: Contract
    order: Order
    status: str = "Submitted"
    filled: Decimal = Decimal(0)
    average: Decimal = Decimal(0)
    executions: list[tuple[Execution, CommissionReport]] = field(default_factory=list)

    @property
    def remaining(self) -> Decimal:
        return Decimal(str(self.order.totalQuantity)) - self.filled

    @property
    def done(self) -> bool:
        return self.status in ("Filled", "Cancelled", "ApiCancelled", "Inactive")


class _Late:
    """A connection whose answers to one request arrive ``delay`` seconds late (a slow gateway)."""

    def __init__(self, session: GatewaySession, delay: float) -> None:
        self.session, self.delay = session, delay
        self.wrapper, self.clientId = session.wrapper, session.clientId

    def later(self, callback: Callable[..., Any], *args: Any) -> None:
        asyncio.get_running_loop().call_later(self.delay, self._deliver, callback, args)

    def _deliver(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        with self.session.gateway.guard:
            self.session.later(callback, *args)


@dataclass
class FakeGateway:
    cash: Decimal = Decimal(1_000_000)
    quotes: QuoteModel = field(default_factory=QuoteModel)
    faults: FakeFaults = field(default_factory=FakeFaults)
    orders: dict[int, GatewayOrder] = field(default_factory=dict)
    positions: dict[str, tuple[Contract, Decimal, Decimal]] = field(default_factory=dict)
    """quote symbol -> (contract, quantity, average cost)."""
    next_valid_id: int = 1
    clients: list[GatewaySession] = field(default_factory=list)
    lost: bool = False
    """Error 1100 was sent: the gateway lost its connection to IB."""
    quote_requests: list[str] = field(default_factory=list)
    placements: list[int] = field(default_factory=list)
    """Order ids of every placement message that reached the gateway."""
    message_limit: int | None = None
    """Messages a second each API client may send (TWS: 50); unset, messages are only counted."""
    rates: dict[int, MessageRate] = field(default_factory=dict)
    """Each client id's messages (``MessageRate``)."""
    idle_drops: int = 0
    """Times ``drop_when_idle`` closed the connections."""
    guard: Any = field(default_factory=contextlib.nullcontext)
    """Held while the gateway answers a request or acts on a timer (a lock where a test works
    the gateway from another thread: ``ibkr_bridge.serve_gateway_thread``)."""
    _last_message: float = 0.0
    _perm_ids: Any = field(default_factory=lambda: itertools.count(9_000_001))
    _exec_ids: Any = field(default_factory=lambda: itertools.count(1))

    def make_ib(self) -> IB:
        """A real ``ib_async.IB`` whose client talks to this gateway."""
        ib = IB()
        ib.client = FakeIbClient(ib.wrapper, self)
        ib.client.apiEnd += ib.disconnectedEvent
        return ib

    def switch_faults(self, changes: dict[str, Any]) -> dict[str, Any]:
        result = self.faults.switch(changes)
        if changes.get("outage"):
            for client in list(self.clients):
                client.drop()
        if "auth_expired" in changes:
            self.lose_ib() if changes["auth_expired"] else self.restore_ib()
        return result

    def lose_ib(self) -> None:
        """The gateway loses its connection to IB (error 1100) while it stays logged in: the API
        connections stay up, and nothing that happens at IB meanwhile reaches them."""
        self.lost = self.faults.auth_expired = True
        for client in self.clients:
            client.later(client.wrapper.error, -1, 1100, LOST_TEXT, "")

    def restore_ib(self) -> None:
        """IB is back (error 1102, "data maintained"): what happened meanwhile is not pushed; a
        client finds it by asking (open and completed orders, executions)."""
        self.lost = self.faults.auth_expired = False
        for client in self.clients:
            client.later(client.wrapper.error, -1, 1102, RESTORED_TEXT, "")

    def drop_clients(self) -> None:
        """The gateway closes every API connection (they may connect again at once)."""
        for client in list(self.clients):
            client.drop()

    async def drop_when_idle(self, times: int, idle_s: float = 0.3, apart_s: float = 1.5) -> None:
        """Close the API connections ``times`` times, each once no message has come for
        ``idle_s`` (an idle connection), ``apart_s`` apart."""
        for _ in range(times):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with self.guard:
                    if self.clients and time.monotonic() - self._last_message >= idle_s:
                        self.drop_clients()
                        self.idle_drops += 1
                        break
                await asyncio.sleep(0.05)
            await asyncio.sleep(apart_s)

    def paced(self, client: GatewaySession, req_id: int) -> bool:
        """Count one message from ``client``; past ``message_limit`` a second it is answered
        with error 100 and dropped (False)."""
        self._last_message = time.monotonic()
        rate = self.rates.setdefault(client.clientId, MessageRate(self.message_limit or 0))
        if rate.admit(self._last_message) or not self.message_limit:
            return True
        client.later(client.wrapper.error, req_id, 100, PACING_TEXT, "")
        return False

    def rate_stats(self) -> dict[str, Any]:
        """``limit`` (a second), ``peak`` (most messages of one client in a rolling second),
        ``refused`` (error 100 for exceeding it), ``messages``, and the scripted error 100s."""
        rates = list(self.rates.values())
        return {
            "limit": self.message_limit,
            "per_seconds": 1.0,
            "peak": max((r.peak for r in rates), default=0),
            "refused": sum(r.refused for r in rates) if self.message_limit else 0,
            "messages": sum(r.messages for r in rates),
            "scripted_pacing": self.faults.rate_limited_sent,
        }

    def end_day(self) -> None:
        """The trading day closes (IB has no ``done_for_day``): working DAY orders are cancelled
        by IB, working GTC orders are held until the next open (``PreSubmitted``)."""
        for placed in self.orders.values():
            if placed.done:
                continue
            placed.status = "PreSubmitted" if placed.order.tif == "GTC" else "Cancelled"
            self._tell_status(placed)

    def next_day(self) -> None:
        """The next trading day opens: held GTC orders work again."""
        for placed in self.orders.values():
            if placed.status == "PreSubmitted" and placed.order.tif == "GTC":
                placed.status = "Submitted"
                self._tell_status(placed)

    def restart(self) -> None:
        """The gateway restarts: its connections drop and ``nextValidId`` rolls back."""
        for client in list(self.clients):
            client.drop()
        self.next_valid_id = 1

    # The book ------------------------------------------------------------------------------

    def place(self, client: GatewaySession, order_id: int, contract: Contract, order: Order) -> None:
        if self.faults.server_errors_next > 0:
            self.faults.server_errors_next -= 1
            # The connection drops as the order arrives (after the client's write returned): the
            # gateway never reads it.
            asyncio.get_running_loop().call_soon(client.drop)
            return
        self.placements.append(order_id)
        if self.lost:
            client.later(client.wrapper.error, order_id, 1100, LOST_TEXT, "")
            return
        if self.faults.rate_limited_next > 0 or self.faults.rate_limited_orders_next > 0:
            if self.faults.rate_limited_next > 0:
                self.faults.rate_limited_next -= 1
            else:
                self.faults.rate_limited_orders_next -= 1
            self.faults.rate_limited_sent += 1
            client.later(client.wrapper.error, order_id, 100, PACING_TEXT, "")
            return
        if order_id in self.orders:
            client.later(client.wrapper.error, order_id, 103, "Duplicate order id", "")
            return
        symbol = quote_symbol(contract)
        if symbol in self.faults.unknown_symbols or contract.symbol in self.faults.unknown_symbols:
            client.later(
                client.wrapper.error, order_id, 200, "No security definition has been found for the request", ""
            )
            return
        if self.faults.reject_next > 0:
            self.faults.reject_next -= 1
            client.later(
                client.wrapper.error,
                order_id,
                201,
                "Order rejected - reason:YOUR ORDER IS NOT ACCEPTED. IN ORDER TO OBTAIN THE DESIRED POSITION YOUR "
                "EQUITY WITH LOAN VALUE [0.00 USD] MUST EXCEED THE INITIAL MARGIN [500.00 USD]",
                "",
            )
            return
        kept = copy.copy(order)
        kept.orderId, kept.clientId, kept.permId = order_id, client.clientId, next(self._perm_ids)
        self.next_valid_id = max(self.next_valid_id, order_id + 1)
        placed = GatewayOrder(client.clientId, copy.copy(contract), kept)
        self.orders[order_id] = placed
        lost_reply = self.faults.timeouts_after_accept > 0 or self.faults.server_errors_after_accept > 0
        if self.faults.timeouts_after_accept > 0:
            self.faults.timeouts_after_accept -= 1
        elif lost_reply:
            self.faults.server_errors_after_accept -= 1
        answer: GatewaySession | _Late = client
        if self.faults.slow_replies > 0 and not lost_reply:
            self.faults.slow_replies -= 1
            answer = _Late(client, self.faults.slow_reply_s)
        quote = self.quotes.quote(symbol)
        buying = order.action == "BUY"
        touch = quote.ask if buying else quote.bid
        limit = Decimal(str(order.lmtPrice)) if order.orderType == "LMT" else None
        marketable = limit is None or (limit >= touch if buying else limit <= touch)
        if not marketable and self.faults.pending_new_next > 0:
            self.faults.pending_new_next -= 1
            placed.status = "PreSubmitted"  # accepted, not yet working at the exchange
            asyncio.get_running_loop().call_later(self.faults.pending_new_s, self._release, placed)
        if not lost_reply:
            self._send_open(answer, placed)
        if marketable:
            for lot in self.faults.lots(placed.remaining):
                tell = self._execution(placed, lot, touch)
                if not lost_reply:
                    tell(answer)
        if lost_reply:
            client.drop()  # taken (and filled) at the gateway; the answers are lost with the connection

    def _release(self, placed: GatewayOrder) -> None:
        """A ``PreSubmitted`` order starts working (``Submitted``)."""
        with self.guard:
            if placed.status == "PreSubmitted":
                placed.status = "Submitted"
                self._tell_status(placed)

    def _tell_status(self, placed: GatewayOrder) -> None:
        client = self._client(placed.client_id)
        if client is not None and not self.lost:
            client.later(self._send_status, client, placed)

    def trade(self, order_id: int, quantity: Decimal | None = None) -> None:
        """The market reaches a working order: fill ``quantity`` (all that is left) at its limit."""
        placed = self.orders[order_id]
        size = quantity if quantity is not None else placed.remaining
        tell = self._execution(placed, size, Decimal(str(placed.order.lmtPrice)))
        if not self.lost:  # else nothing reaches the clients, then or after 1102
            tell(self._client(placed.client_id))

    def cancel(self, client: GatewaySession, order_id: int) -> None:
        placed = self.orders.get(order_id)
        if placed is None:
            client.later(
                client.wrapper.error,
                order_id,
                10147,
                f"OrderId {order_id} that needs to be cancelled is not found.",
                "",
            )
            return
        if placed.done:
            client.later(
                client.wrapper.error, order_id, 161, "Cancel attempted when order is not in a cancellable state.", ""
            )
            return
        placed.status = "Cancelled"
        client.later(self._send_status, client, placed)
        client.later(client.wrapper.error, order_id, 202, "Order Canceled - reason:", "")

    def _client(self, client_id: int) -> GatewaySession | None:
        return next((c for c in self.clients if c.clientId == client_id), None)

    def _execution(
        self, placed: GatewayOrder, size: Decimal, price: Decimal
    ) -> Callable[[GatewaySession | _Late | None], None]:
        """Fill ``size`` now; the returned call tells ``client`` (if any) about it."""
        total = placed.filled + size
        placed.average = (placed.average * placed.filled + price * size) / total
        placed.filled = total
        placed.status = "Filled" if placed.remaining <= 0 else "Submitted"
        execution = Execution(
            execId=f"0000e0d5.{next(self._exec_ids):08x}.01.01",
            time=datetime.now(UTC),
            acctNumber=ACCOUNT,
            exchange="SMART",
            side="BOT" if placed.order.action == "BUY" else "SLD",
            shares=float(size),
            price=float(price),
            permId=placed.order.permId,
            clientId=placed.client_id,
            orderId=placed.order.orderId,
            cumQty=float(total),
            avgPrice=float(placed.average),
            orderRef=placed.order.orderRef,
        )
        commission = CommissionReport(
            execId=execution.execId, commission=float(self._commission(placed.contract, size, price)), currency="USD"
        )
        placed.executions.append((execution, commission))
        self._book(placed, size, price)

        def tell(client: GatewaySession | _Late | None) -> None:
            if client is None:
                return
            client.later(client.wrapper.execDetails, -1, placed.contract, execution)
            client.later(self._send_status, client, placed)
            client.later(client.wrapper.commissionReport, copy.copy(commission))
            client.later(self._send_account, client)

        return tell

    @staticmethod
    def _commission(contract: Contract, size: Decimal, price: Decimal) -> Decimal:
        if contract.secType == "STK":
            return max(Decimal(1), size * STOCK_COMMISSION)
        if contract.secType == "OPT":
            return max(Decimal(1), size * Decimal("0.65"))
        return max(Decimal("1.75"), size * price * Decimal("0.0018"))

    def _book(self, placed: GatewayOrder, size: Decimal, price: Decimal) -> None:
        multiplier = 100 if placed.contract.secType == "OPT" else 1
        signed = size if placed.order.action == "BUY" else -size
        self.cash -= signed * price * multiplier
        symbol = quote_symbol(placed.contract)
        _, held, cost = self.positions.get(symbol, (placed.contract, Decimal(0), Decimal(0)))
        after = held + signed
        average = (held * cost + signed * price * multiplier) / after if signed > 0 and after else cost
        self.positions[symbol] = (placed.contract, after, average)

    # What the gateway sends ----------------------------------------------------------------

    def _send_open(self, client: GatewaySession | _Late | None, placed: GatewayOrder) -> None:
        if client is None:
            return
        client.later(
            client.wrapper.openOrder,
            placed.order.orderId,
            placed.contract,
            placed.order,
            OrderState(status=placed.status),
        )
        client.later(self._send_status, client, placed)

    def _send_status(self, client: GatewaySession | _Late, placed: GatewayOrder) -> None:
        client.wrapper.orderStatus(
            placed.order.orderId,
            placed.status,
            float(placed.filled),
            float(placed.remaining if not placed.done else 0),
            float(placed.average),
            placed.order.permId,
            0,
            float(placed.average),
            placed.client_id,
            "",
        )

    def _send_account(self, client: GatewaySession | _Late) -> None:
        held = Decimal(0)
        for contract, quantity, cost in self.positions.values():
            mark = self.quotes.mid(quote_symbol(contract))
            multiplier = 100 if contract.secType == "OPT" else 1
            value = quantity * mark * multiplier
            held += value
            client.wrapper.updatePortfolio(
                contract, float(quantity), float(mark), float(value), float(cost),
                float(value - quantity * cost), 0.0, ACCOUNT,
            )  # fmt: skip
        for tag, value in (
            ("TotalCashValue", self.cash),
            ("NetLiquidation", self.cash + held),
            ("BuyingPower", self.cash * 4),
        ):
            client.wrapper.updateAccountValue(tag, str(value), "USD", ACCOUNT)


class GatewaySession(ABC):
    """The requests a client connection sends, answered by the gateway through ``later`` (in
    this process, or over the bridge's socket: ``ibkr_bridge.py``)."""

    gateway: FakeGateway
    wrapper: Any
    clientId: int

    @abstractmethod
    def later(self, callback: Callable[..., Any], *args: Any) -> None:
        """Deliver a gateway callback to this connection's wrapper."""

    @abstractmethod
    def drop(self) -> None:
        """The gateway's side closes the connection."""

    def _paced(self, req_id: int = -1) -> bool:
        """Each request is one message to TWS, counted against its pacing (``MessageRate``)."""
        return self.gateway.paced(self, req_id)

    def placeOrder(self, orderId: int, contract: Contract, order: Order) -> None:
        if self._paced(orderId):
            self.gateway.place(self, orderId, contract, order)

    def cancelOrder(self, orderId: int, manualCancelOrderTime: str = "") -> None:
        if self._paced(orderId):
            self.gateway.cancel(self, orderId)

    def reqIds(self, numIds: int) -> None:
        if self._paced():
            self.later(self.wrapper.nextValidId, self.gateway.next_valid_id)

    def reqAutoOpenOrders(self, bAutoBind: bool) -> None:
        """Binding orders entered in TWS by hand (client id 0 only): the fake has none."""
        return

    def reqOpenOrders(self) -> None:
        if self._paced():
            self._open_orders(lambda o: o.client_id == self.clientId)

    def reqAllOpenOrders(self) -> None:
        if self._paced():
            self._open_orders(lambda o: True)

    def _open_orders(self, wanted: Callable[[GatewayOrder], bool]) -> None:
        for placed in self.gateway.orders.values():
            if wanted(placed) and not placed.done:
                self.later(
                    self.wrapper.openOrder, placed.order.orderId, placed.contract, copy.copy(placed.order),
                    OrderState(status=placed.status),
                )  # fmt: skip
                self.later(self.gateway._send_status, self, placed)
        self.later(self.wrapper.openOrderEnd)

    def reqCompletedOrders(self, apiOnly: bool) -> None:
        if not self._paced():
            return
        for placed in self.gateway.orders.values():
            if placed.done:
                order = copy.copy(placed.order)
                order.filledQuantity = float(placed.filled)
                self.later(self.wrapper.completedOrder, placed.contract, order, OrderState(status=placed.status))
        self.later(self.wrapper.completedOrdersEnd)

    def reqExecutions(self, reqId: int, execFilter: Any) -> None:
        if not self._paced(reqId):
            return
        for placed in self.gateway.orders.values():
            for execution, commission in placed.executions:
                self.later(self.wrapper.execDetails, reqId, placed.contract, copy.copy(execution))
                self.later(self.wrapper.commissionReport, copy.copy(commission))
        self.later(self.wrapper.execDetailsEnd, reqId)

    def reqPositions(self) -> None:
        if not self._paced():
            return
        for contract, quantity, cost in self.gateway.positions.values():
            self.later(self.wrapper.position, ACCOUNT, contract, float(quantity), float(cost))
        self.later(self.wrapper.positionEnd)

    def reqAccountUpdates(self, subscribe: bool, acctCode: str) -> None:
        if self._paced() and subscribe:
            self.later(self.gateway._send_account, self)
            self.later(self.wrapper.accountDownloadEnd, acctCode)

    def reqAccountUpdatesMulti(self, reqId: int, account: str, modelCode: str, ledgerAndNLV: bool) -> None:
        if self._paced(reqId):
            self.later(self.wrapper.accountUpdateMultiEnd, reqId)

    def reqContractDetails(self, reqId: int, contract: Contract) -> None:
        """One match, with a conId, for any symbol the gateway knows."""
        if not self._paced(reqId):
            return
        symbol = quote_symbol(contract)
        if symbol not in self.gateway.faults.unknown_symbols:
            qualified = copy.copy(contract)
            qualified.conId = int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:4], "big")
            self.later(self.wrapper.contractDetails, reqId, ContractDetails(contract=qualified))
        self.later(self.wrapper.contractDetailsEnd, reqId)

    def reqMktData(
        self, reqId: int, contract: Contract, genericTickList: str, snapshot: bool, regulatorySnapshot: bool,
        mktDataOptions: Any,
    ) -> None:  # fmt: skip
        """A snapshot of the best bid and ask (ticks 1 and 2), as a subscribed account gets it."""
        if not self._paced(reqId):
            return
        self.gateway.quote_requests.append(quote_symbol(contract))
        if quote_symbol(contract) in self.gateway.faults.unknown_symbols:
            self.later(self.wrapper.error, reqId, 200, "No security definition has been found for the request", "")
            return
        quote = self.gateway.quotes.quote(quote_symbol(contract))
        self.later(self.wrapper.priceSizeTick, reqId, 1, float(quote.bid), 100.0)
        self.later(self.wrapper.priceSizeTick, reqId, 2, float(quote.ask), 100.0)
        self.later(self.wrapper.tickSnapshotEnd, reqId)


class FakeIbClient(GatewaySession, Client):
    """``ib_async.Client`` with the fake gateway where the socket would be."""

    def __init__(self, wrapper: Any, gateway: FakeGateway) -> None:
        super().__init__(wrapper)
        self.gateway = gateway

    def later(self, callback: Callable[..., Any], *args: Any) -> None:
        """Deliver a callback on a later turn of the loop, as the socket would (never after a drop)."""

        def deliver() -> None:
            if self.isReady():
                callback(*args)

        asyncio.get_running_loop().call_soon(deliver)

    async def connectAsync(self, host: str, port: int, clientId: int, timeout: float | None = 2.0) -> None:
        await asyncio.sleep(0)
        if self.gateway.faults.outage:
            raise ConnectionRefusedError(f"[Errno 111] Connect call failed ('{host}', {port})")
        self.host, self.port, self.clientId = host, int(port), int(clientId)
        self.connState = Client.CONNECTED
        self._apiReady = True
        self._serverVersion = 178
        self._accounts = [ACCOUNT]
        self.wrapper.managedAccounts(ACCOUNT)
        self.updateReqId(self.gateway.next_valid_id)  # nextValidId
        self.gateway.clients.append(self)
        self._paced()  # the API handshake's startApi message
        if self.gateway.lost:
            self.later(self.wrapper.error, -1, 1100, LOST_TEXT, "")

    def disconnect(self) -> None:
        if self in self.gateway.clients:
            self.gateway.clients.remove(self)
        super().disconnect()

    def drop(self) -> None:
        """The gateway's side closes the connection (what ib_async does when its socket drops)."""
        if self in self.gateway.clients:
            self.gateway.clients.remove(self)
        super().disconnect()
        self.wrapper.connectionClosed()
        self.apiEnd.emit()

    def send(self, *fields: Any, makeEmpty: bool = True) -> None:
        raise AssertionError(f"the fake gateway does not answer this request: {fields[:2]}")
