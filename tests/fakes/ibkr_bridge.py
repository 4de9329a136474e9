"""The fake IB gateway across processes, for tests that run the executor as a process (and kill
it): the gateway lives in the test, as a real one outlives its clients, and the executor's
ib_async client reaches it over a loopback socket.

One JSON object per line. The client sends ``{"op": <request>, "args": [...]}`` (the first one
``connect``, answered with ``{"hello": ...}`` or ``{"refused": ...}``); the gateway answers with
``{"cb": <wrapper callback>, "args": [...]}``, which the client calls on its wrapper. ib_async's
dataclasses travel by name and fields. Requests leave through ib_async's own throttle
(``Client.sendMsg``: ``MaxRequests`` a ``RequestsInterval``), as they would to TWS, so the
gateway's pacing (``FakeGateway.message_limit``) sees what a real client would send.

In the test: ``async with serve_gateway(gateway) as address`` (or ``with
serve_gateway_thread(gateway) as (address, lock)``, from a thread of its own); in the executor process:
``python -m tests.chaos.ibkr_executor`` with ``TEST_IBKR_BRIDGE`` set to that address.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import ib_async
from ib_async import IB, Client, Contract, Order

import tests.fakes.ibkr as fake
from tests.fakes.ibkr import FakeGateway, GatewaySession

BRIDGE_ENV = "TEST_IBKR_BRIDGE"


def encode(value: Any) -> Any:
    if isinstance(value, Contract):
        return {"__ib__": "Contract", "v": {k: encode(v) for k, v in dataclasses.asdict(value).items()}}
    if isinstance(value, Order):
        return {"__ib__": "Order", "v": {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__ib__": type(value).__name__, "v": fields}
    if isinstance(value, datetime):
        return {"__time__": value.isoformat()}
    if isinstance(value, Decimal):
        return {"__dec__": str(value)}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    return value


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if "__time__" in value:
            return datetime.fromisoformat(value["__time__"])
        if "__dec__" in value:
            return Decimal(value["__dec__"])
        if "__ib__" in value:
            cls = getattr(ib_async, value["__ib__"])
            return cls(**{k: decode(v) for k, v in value["v"].items()})
        return {k: decode(v) for k, v in value.items()}
    return value


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


# The gateway's side ------------------------------------------------------------------------


class _RemoteWrapper:
    """Stands for the client's wrapper: each callback goes over the socket."""

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        self._send = send

    def __getattr__(self, name: str) -> Callable[..., None]:
        def call(*args: Any) -> None:
            self._send({"cb": name, "args": encode(list(args))})

        return call


class RemoteSession(GatewaySession):
    """One API connection at the gateway. What it sends is written by the gateway's event loop
    in the order it was sent, whichever thread sent it (a test's step works the gateway from
    the test's own thread: ``serve_gateway_thread``)."""

    def __init__(self, gateway: FakeGateway, writer: asyncio.StreamWriter, client_id: int) -> None:
        self.gateway, self.clientId, self._writer = gateway, client_id, writer
        self.wrapper = _RemoteWrapper(self._send)
        self._loop = asyncio.get_running_loop()
        self._closed = False

    def _send(self, message: dict[str, Any]) -> None:
        if not self._closed:
            self._loop.call_soon_threadsafe(self._write, _line(message))

    def _write(self, line: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(line)

    def later(self, callback: Callable[..., Any], *args: Any) -> None:
        callback(*args)  # the socket delivers it later

    def isReady(self) -> bool:
        return not self._closed

    def drop(self) -> None:
        if self in self.gateway.clients:
            self.gateway.clients.remove(self)
        self._closed = True
        self._loop.call_soon_threadsafe(self._writer.close)


@contextlib.asynccontextmanager
async def serve_gateway(gateway: FakeGateway) -> AsyncIterator[str]:
    """Serve ``gateway`` on a loopback port; yields ``host:port``."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remote: RemoteSession | None = None
        try:
            hello = json.loads(await reader.readline())
            with gateway.guard:
                if gateway.faults.outage:
                    writer.write(_line({"refused": "[Errno 111] Connect call failed"}))
                    return
                remote = RemoteSession(gateway, writer, int(hello["clientId"]))
                gateway.clients.append(remote)
                writer.write(_line({"hello": {"next_valid_id": gateway.next_valid_id, "account": fake.ACCOUNT}}))
                gateway.paced(remote, -1)  # the API handshake's startApi message
                if gateway.lost:
                    remote.wrapper.error(-1, 1100, fake.LOST_TEXT, "")
            while line := await reader.readline():
                request = json.loads(line)
                with gateway.guard:
                    getattr(remote, request["op"])(*decode(request["args"]))
                await writer.drain()
        except (ConnectionError, json.JSONDecodeError):
            pass  # the executor died (the crash tests kill it)
        finally:
            if remote is not None and remote in gateway.clients:
                gateway.clients.remove(remote)
            writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield f"{host}:{port}"
    finally:
        server.close()
        with gateway.guard:
            gateway.drop_clients()


@contextlib.contextmanager
def serve_gateway_thread(gateway: FakeGateway) -> Iterator[tuple[str, threading.RLock]]:
    """Serve ``gateway`` from a thread of its own (a test that blocks its event loop, waiting
    for `mbx up`, must not stop the gateway answering); yields ``host:port`` and the lock the
    gateway holds while it answers (``FakeGateway.guard``): hold it to work the gateway."""
    lock = threading.RLock()
    gateway.guard = lock
    loop = asyncio.new_event_loop()
    address: concurrent.futures.Future[str] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def run() -> None:
        async with serve_gateway(gateway) as served:
            address.set_result(served)
            await stop.wait()
        await asyncio.sleep(0.1)  # the sessions see their connections closed

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), name="fake-ib-gateway", daemon=True)
    thread.start()
    try:
        yield address.result(timeout=10), lock
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


# The executor's side -----------------------------------------------------------------------


class _LineSocket:
    """Where ib_async's ``Client.sendMsg`` writes (its ``conn``): one JSON line per message."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.numBytesSent = 0
        self.numMsgSent = 0

    def sendMsg(self, msg: bytes) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(msg)
            self.numBytesSent += len(msg)
            self.numMsgSent += 1

    def disconnect(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class BridgeClient(Client):
    """``ib_async.Client`` whose socket leads to the test's fake gateway."""

    def __init__(self, wrapper: Any, address: str) -> None:
        super().__init__(wrapper)
        self._address = address
        self._socket = _LineSocket()
        self.conn = self._socket  # type: ignore[assignment]  # requests leave through ib_async's throttle
        self._reading: asyncio.Task[None] | None = None

    async def connectAsync(self, host: str, port: int, clientId: int, timeout: float | None = 2.0) -> None:
        bridge_host, _, bridge_port = self._address.rpartition(":")
        reader, writer = await asyncio.open_connection(bridge_host, int(bridge_port))
        writer.write(_line({"op": "connect", "clientId": clientId}))
        answer = json.loads(await asyncio.wait_for(reader.readline(), timeout or None) or b"{}")
        if "hello" not in answer:
            writer.close()
            raise ConnectionRefusedError(answer.get("refused", "the gateway closed the connection"))
        self.host, self.port, self.clientId = host, int(port), int(clientId)
        self.connState = Client.CONNECTED
        self._apiReady = True
        self._serverVersion = 178
        self._accounts = [answer["hello"]["account"]]
        self.wrapper.managedAccounts(answer["hello"]["account"])
        self.updateReqId(answer["hello"]["next_valid_id"])
        self._socket.writer = writer
        self._reading = asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                message = json.loads(line)
                getattr(self.wrapper, message["cb"])(*decode(message["args"]))
        if self.isReady():  # the gateway went away
            super().disconnect()
            self.wrapper.connectionClosed()
            self.apiEnd.emit()

    def _request(self, op: str, *args: Any) -> None:
        writer = self._socket.writer
        if writer is None or writer.is_closing() or not self.isConnected():
            raise ConnectionError("Not connected")
        self.sendMsg(json.dumps({"op": op, "args": encode(list(args))}))  # throttled as ib_async throttles

    def _prefix(self, msg: bytes) -> bytes:
        return msg + b"\n"  # a line, where TWS's protocol puts a length prefix

    def disconnect(self) -> None:
        self._socket.disconnect()
        if self._reading is not None:
            self._reading.cancel()
        super().disconnect()

    def send(self, *fields: Any, makeEmpty: bool = True) -> None:
        raise AssertionError(f"the fake gateway does not answer this request: {fields[:2]}")

    def placeOrder(self, orderId: int, contract: Contract, order: Order) -> None:
        self._request("placeOrder", orderId, contract, order)

    def cancelOrder(self, orderId: int, manualCancelOrderTime: str = "") -> None:
        self._request("cancelOrder", orderId)

    def reqIds(self, numIds: int) -> None:
        self._request("reqIds", numIds)

    def reqAutoOpenOrders(self, bAutoBind: bool) -> None:
        """Binding orders entered in TWS by hand (client id 0 only): the fake has none."""

    def reqOpenOrders(self) -> None:
        self._request("reqOpenOrders")

    def reqAllOpenOrders(self) -> None:
        self._request("reqAllOpenOrders")

    def reqCompletedOrders(self, apiOnly: bool) -> None:
        self._request("reqCompletedOrders", apiOnly)

    def reqExecutions(self, reqId: int, execFilter: Any) -> None:
        self._request("reqExecutions", reqId, None)

    def reqPositions(self) -> None:
        self._request("reqPositions")

    def reqAccountUpdates(self, subscribe: bool, acctCode: str) -> None:
        self._request("reqAccountUpdates", subscribe, acctCode)

    def reqAccountUpdatesMulti(self, reqId: int, account: str, modelCode: str, ledgerAndNLV: bool) -> None:
        self._request("reqAccountUpdatesMulti", reqId, account, modelCode, ledgerAndNLV)


def bridged_ib() -> IB:
    """An ``ib_async.IB`` whose client reaches the gateway at ``TEST_IBKR_BRIDGE``."""
    ib = IB()
    ib.client = BridgeClient(ib.wrapper, os.environ[BRIDGE_ENV])
    ib.client.apiEnd += ib.disconnectedEvent
    return ib
