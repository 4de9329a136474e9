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
the connected client dropped), ``timeouts_after_accept`` (the order is taken, then the
connection drops before any answer), ``reject_next`` (error 201, margin), unknown symbols
(error 200), ``rate_limited_next`` (error 100, pacing), ``auth_expired`` (error 1100: the
gateway lost IB; 1102 when it is back), ``lot_size``.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import itertools
from abc import ABC, abstractmethod
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


@dataclass
class FakeGateway:
    cash: Decimal = Decimal(1_000_000)
    quotes: QuoteModel = field(default_factory=QuoteModel)
    faults: FakeFaults = field(default_factory=FakeFaults)
    orders: dict[int, GatewayOrder] = field(default_factory=dict)
    positions: dict[str, tuple[Contract, Decimal, Decimal]] = field(default_factory=dict)
    """quote symbol -> (contract, quantity, average cost)."""
    next_valid_id: int = 1
    clients: list[FakeIbClient] = field(default_factory=list)
    lost: bool = False
    """Error 1100 was sent: the gateway lost its connection to IB."""
    quote_requests: list[str] = field(default_factory=list)
    placements: list[int] = field(default_factory=list)
    """Order ids of every placement message that reached the gateway."""
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
            self.lost = bool(changes["auth_expired"])
            code, text = (
                (1100, "Connectivity between IB and Trader Workstation has been lost.")
                if self.lost
                else (1102, "Connectivity between IB and Trader Workstation has been restored - data maintained.")
            )
            for client in self.clients:
                client.later(client.wrapper.error, -1, code, text, "")
        return result

    def restart(self) -> None:
        """The gateway restarts: its connections drop and ``nextValidId`` rolls back."""
        for client in list(self.clients):
            client.drop()
        self.next_valid_id = 1

    # The book ------------------------------------------------------------------------------

    def place(self, client: FakeIbClient, order_id: int, contract: Contract, order: Order) -> None:
        self.placements.append(order_id)
        if self.lost:
            text = "Connectivity between IB and Trader Workstation has been lost."
            client.later(client.wrapper.error, order_id, 1100, text, "")
            return
        if self.faults.rate_limited_next > 0:
            self.faults.rate_limited_next -= 1
            client.later(client.wrapper.error, order_id, 100, "Max rate of messages per second has been exceeded", "")
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
        lost_reply = self.faults.timeouts_after_accept > 0
        if lost_reply:
            self.faults.timeouts_after_accept -= 1
        quote = self.quotes.quote(symbol)
        buying = order.action == "BUY"
        touch = quote.ask if buying else quote.bid
        limit = Decimal(str(order.lmtPrice)) if order.orderType == "LMT" else None
        marketable = limit is None or (limit >= touch if buying else limit <= touch)
        if not lost_reply:
            self._send_open(client, placed)
        if marketable:
            for lot in self.faults.lots(placed.remaining):
                tell = self._execution(placed, lot, touch)
                if not lost_reply:
                    tell(client)
        if lost_reply:
            client.drop()  # taken (and filled) at the gateway; the answers are lost with the connection

    def trade(self, order_id: int, quantity: Decimal | None = None) -> None:
        """The market reaches a working order: fill ``quantity`` (all that is left) at its limit."""
        placed = self.orders[order_id]
        size = quantity if quantity is not None else placed.remaining
        self._execution(placed, size, Decimal(str(placed.order.lmtPrice)))(self._client(placed.client_id))

    def cancel(self, client: FakeIbClient, order_id: int) -> None:
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

    def _client(self, client_id: int) -> FakeIbClient | None:
        return next((c for c in self.clients if c.clientId == client_id), None)

    def _execution(self, placed: GatewayOrder, size: Decimal, price: Decimal) -> Callable[[FakeIbClient | None], None]:
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

        def tell(client: FakeIbClient | None) -> None:
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

    def _send_open(self, client: FakeIbClient | None, placed: GatewayOrder) -> None:
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

    def _send_status(self, client: FakeIbClient, placed: GatewayOrder) -> None:
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

    def _send_account(self, client: FakeIbClient) -> None:
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

    def placeOrder(self, orderId: int, contract: Contract, order: Order) -> None:
        self.gateway.place(self, orderId, contract, order)

    def cancelOrder(self, orderId: int, manualCancelOrderTime: str = "") -> None:
        self.gateway.cancel(self, orderId)

    def reqIds(self, numIds: int) -> None:
        self.later(self.wrapper.nextValidId, self.gateway.next_valid_id)

    def reqAutoOpenOrders(self, bAutoBind: bool) -> None:
        """Binding orders entered in TWS by hand (client id 0 only): the fake has none."""
        return

    def reqOpenOrders(self) -> None:
        self._open_orders(lambda o: o.client_id == self.clientId)

    def reqAllOpenOrders(self) -> None:
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
        for placed in self.gateway.orders.values():
            if placed.done:
                order = copy.copy(placed.order)
                order.filledQuantity = float(placed.filled)
                self.later(self.wrapper.completedOrder, placed.contract, order, OrderState(status=placed.status))
        self.later(self.wrapper.completedOrdersEnd)

    def reqExecutions(self, reqId: int, execFilter: Any) -> None:
        for placed in self.gateway.orders.values():
            for execution, commission in placed.executions:
                self.later(self.wrapper.execDetails, reqId, placed.contract, copy.copy(execution))
                self.later(self.wrapper.commissionReport, copy.copy(commission))
        self.later(self.wrapper.execDetailsEnd, reqId)

    def reqPositions(self) -> None:
        for contract, quantity, cost in self.gateway.positions.values():
            self.later(self.wrapper.position, ACCOUNT, contract, float(quantity), float(cost))
        self.later(self.wrapper.positionEnd)

    def reqAccountUpdates(self, subscribe: bool, acctCode: str) -> None:
        if subscribe:
            self.later(self.gateway._send_account, self)
            self.later(self.wrapper.accountDownloadEnd, acctCode)

    def reqAccountUpdatesMulti(self, reqId: int, account: str, modelCode: str, ledgerAndNLV: bool) -> None:
        self.later(self.wrapper.accountUpdateMultiEnd, reqId)

    def reqContractDetails(self, reqId: int, contract: Contract) -> None:
        """One match, with a conId, for any symbol the gateway knows."""
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
        if self.gateway.lost:
            self.later(
                self.wrapper.error, -1, 1100, "Connectivity between IB and Trader Workstation has been lost.", ""
            )

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
