"""The fake brokers' streams on loopback websockets. Alpaca's ``trade_updates``: authenticate
with the fake's keys, listen, then every order change arrives as a binary frame (as paper
accounts send them). Coinbase's ``user`` channel: subscribe with a JWT, get a snapshot of the
open orders, then an update per change. ``drop`` closes every connection, as a network blip
would; while the fake's ``stream_down`` fault is on, new connections are closed at once."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import jwt
import websockets
from websockets.asyncio.server import ServerConnection

from tests.fakes.alpaca import FakeAlpaca
from tests.fakes.coinbase import FakeCoinbase

GOLDEN_COINBASE = Path(__file__).parent / "golden" / "coinbase"


@dataclass
class FakeStream:
    url: str
    connections: set[ServerConnection] = field(default_factory=set)

    async def drop(self) -> None:
        for connection in list(self.connections):
            await connection.close(code=1011, reason="dropped by the test")

    async def pump(
        self,
        ws: ServerConnection,
        listeners: list[Callable[[dict[str, Any]], None]],
        frame: Callable[[dict[str, Any]], bytes],
    ) -> None:
        """Send each change the fake announces to its ``listeners`` (from any thread) as a
        frame, until the client goes away."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def listener(change: dict[str, Any]) -> None:  # may run in the HTTP server's thread
            loop.call_soon_threadsafe(queue.put_nowait, copy.deepcopy(change))

        listeners.append(listener)
        self.connections.add(ws)
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            while True:
                change = asyncio.ensure_future(queue.get())
                await asyncio.wait({change, closed}, return_when=asyncio.FIRST_COMPLETED)
                if not change.done():
                    change.cancel()
                    return  # the client went away
                await ws.send(frame(change.result()))
        except websockets.ConnectionClosed:
            pass
        finally:
            closed.cancel()
            listeners.remove(listener)
            self.connections.discard(ws)


@asynccontextmanager
async def serve_stream(fake: FakeAlpaca) -> AsyncIterator[FakeStream]:
    stream = FakeStream("")

    async def session(ws: ServerConnection) -> None:
        if fake.faults.stream_down:
            await ws.close(code=1011, reason="stream unavailable")
            return
        auth = json.loads(await ws.recv())
        data = auth.get("data", {})
        if (data.get("key_id"), data.get("secret_key")) != (fake.key_id, fake.secret_key) or fake.faults.auth_expired:
            await ws.send(
                _encode({"stream": "authorization", "data": {"status": "unauthorized", "action": "authenticate"}})
            )
            await ws.close()
            return
        await ws.send(_encode({"stream": "authorization", "data": {"status": "authorized", "action": "authenticate"}}))
        listen = json.loads(await ws.recv())
        streams = listen.get("data", {}).get("streams", [])
        await ws.send(_encode({"stream": "listening", "data": {"streams": streams}}))
        await stream.pump(ws, fake.listeners, _encode)

    async with websockets.serve(session, "127.0.0.1", 0) as server:
        host, port = next(iter(server.sockets)).getsockname()[:2]
        stream.url = f"ws://{host}:{port}/stream"
        yield stream


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


@asynccontextmanager
async def serve_user_stream(fake: FakeCoinbase) -> AsyncIterator[FakeStream]:
    """The fake Coinbase's ``user`` channel: a subscription must carry a JWT of the test key;
    it answers with a snapshot of the open orders, then an update whenever an order changes."""
    stream = FakeStream("")
    sequence = 0

    def envelope(kind: str, orders: list[dict[str, Any]]) -> bytes:
        nonlocal sequence
        sequence += 1
        events = [{"type": kind, "orders": [user_order(o) for o in orders]}]
        return _encode(
            {"channel": "user", "client_id": "", "timestamp": "", "sequence_num": sequence, "events": events}
        )

    async def session(ws: ServerConnection) -> None:
        if fake.faults.stream_down:
            await ws.close(code=1011, reason="stream unavailable")
            return
        channels = set()
        for _ in range(2):  # user and heartbeats
            request = json.loads(await ws.recv())
            try:
                claims = jwt.decode(request.get("jwt", ""), fake.public_key, algorithms=["ES256"])
            except jwt.PyJWTError:
                claims = {}
            if claims.get("sub") != fake.key_name or fake.faults.auth_expired:
                await ws.send(_encode({"type": "error", "message": "authentication failure"}))
                await ws.close()
                return
            channels.add(request.get("channel"))
        await ws.send(_encode({"channel": "subscriptions", "events": [{"subscriptions": {c: [] for c in channels}}]}))
        await ws.send(envelope("snapshot", [o for o in fake.orders.values() if o["status"] == "OPEN"]))
        await stream.pump(ws, fake.listeners, lambda order: envelope("update", [order]))

    async with websockets.serve(session, "127.0.0.1", 0) as server:
        host, port = next(iter(server.sockets)).getsockname()[:2]
        stream.url = f"ws://{host}:{port}"
        yield stream


def user_order(order: dict[str, Any]) -> dict[str, Any]:
    """An order as the ``user`` channel shows it (golden/coinbase/user_order.json's fields)."""
    shown: dict[str, Any] = json.loads((GOLDEN_COINBASE / "user_order.json").read_text())
    configured = next(iter(order["order_configuration"].values()))
    size = Decimal(configured.get("base_size", order["filled_size"]))
    shown.update(
        order_id=order["order_id"],
        client_order_id=order["client_order_id"],
        cumulative_quantity=order["filled_size"],
        leaves_quantity=str(max(size - Decimal(order["filled_size"]), Decimal(0))),
        avg_price=order["average_filled_price"],
        total_fees=order["total_fees"],
        status=order["status"],
        product_id=order["product_id"],
        creation_time=order["created_time"],
        order_side=order["side"],
    )
    return shown
