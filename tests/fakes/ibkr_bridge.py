"""The fake IB gateway across processes, for tests that run the executor as a process (and kill
it): the gateway lives in the test, as a real one outlives its clients, and the executor's
ib_async client reaches it over a loopback socket.

One JSON object per line. The client sends ``{"op": <request>, "args": [...]}`` (the first one
``connect``, answered with ``{"hello": ...}`` or ``{"refused": ...}``); the gateway answers with
``{"cb": <wrapper callback>, "args": [...]}``, which the client calls on its wrapper. ib_async's
dataclasses travel by name and fields.

In the test: ``async with serve_gateway(gateway) as address``; in the executor process:
``python -m tests.chaos.ibkr_executor`` with ``TEST_IBKR_BRIDGE`` set to that address.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
from collections.abc import AsyncIterator, Callable
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
    def __init__(self, gateway: FakeGateway, writer: asyncio.StreamWriter, client_id: int) -> None:
        self.gateway, self.clientId, self._writer = gateway, client_id, writer
        self.wrapper = _RemoteWrapper(self._send)

    def _send(self, message: dict[str, Any]) -> None:
        if not self._writer.is_closing():
            self._writer.write(_line(message))

    def later(self, callback: Callable[..., Any], *args: Any) -> None:
        callback(*args)  # the socket delivers it later

    def isReady(self) -> bool:
        return not self._writer.is_closing()

    def drop(self) -> None:
        if self in self.gateway.clients:
            self.gateway.clients.remove(self)  # type: ignore[arg-type]
        self._writer.close()


@contextlib.asynccontextmanager
async def serve_gateway(gateway: FakeGateway) -> AsyncIterator[str]:
    """Serve ``gateway`` on a loopback port; yields ``host:port``."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remote: RemoteSession | None = None
        try:
            hello = json.loads(await reader.readline())
            if gateway.faults.outage:
                writer.write(_line({"refused": "[Errno 111] Connect call failed"}))
                return
            remote = RemoteSession(gateway, writer, int(hello["clientId"]))
            gateway.clients.append(remote)  # type: ignore[arg-type]
            writer.write(_line({"hello": {"next_valid_id": gateway.next_valid_id, "account": fake.ACCOUNT}}))
            if gateway.lost:
                remote.wrapper.error(-1, 1100, "Connectivity between IB and Trader Workstation has been lost.", "")
            while line := await reader.readline():
                request = json.loads(line)
                getattr(remote, request["op"])(*decode(request["args"]))
                await writer.drain()
        except (ConnectionError, json.JSONDecodeError):
            pass  # the executor died (the crash tests kill it)
        finally:
            if remote is not None and remote in gateway.clients:
                gateway.clients.remove(remote)  # type: ignore[arg-type]
            writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield f"{host}:{port}"
    finally:
        server.close()
        for client in list(gateway.clients):
            client.drop()


# The executor's side -----------------------------------------------------------------------


class BridgeClient(Client):
    """``ib_async.Client`` whose socket leads to the test's fake gateway."""

    def __init__(self, wrapper: Any, address: str) -> None:
        super().__init__(wrapper)
        self._address = address
        self._writer: asyncio.StreamWriter | None = None
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
        self._writer = writer
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
        if self._writer is None or self._writer.is_closing():
            raise ConnectionError("Not connected")
        self._writer.write(_line({"op": op, "args": encode(list(args))}))

    def disconnect(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
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
