"""The fake Alpaca's ``trade_updates`` stream on a loopback websocket: authenticate with the
fake's keys, listen, then every order change of the fake arrives as a binary frame (as paper
accounts send them). ``drop`` closes every connection, as a network blip would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection

from tests.fakes.alpaca import FakeAlpaca


@dataclass
class FakeStream:
    url: str
    connections: set[ServerConnection] = field(default_factory=set)
    sessions: int = 0
    """Connections that authenticated and listened, over the stream's life."""

    async def drop(self) -> None:
        for connection in list(self.connections):
            await connection.close(code=1011, reason="dropped by the test")


@asynccontextmanager
async def serve_stream(fake: FakeAlpaca) -> AsyncIterator[FakeStream]:
    loop = asyncio.get_running_loop()
    stream = FakeStream("")

    async def session(ws: ServerConnection) -> None:
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
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def listener(message: dict[str, Any]) -> None:  # may run in the HTTP server's thread
            loop.call_soon_threadsafe(queue.put_nowait, message)

        fake.listeners.append(listener)
        stream.connections.add(ws)
        stream.sessions += 1
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            while True:
                message = asyncio.ensure_future(queue.get())
                await asyncio.wait({message, closed}, return_when=asyncio.FIRST_COMPLETED)
                if not message.done():
                    message.cancel()
                    return  # the client went away
                await ws.send(_encode(message.result()))
        except websockets.ConnectionClosed:
            pass
        finally:
            closed.cancel()
            fake.listeners.remove(listener)
            stream.connections.discard(ws)

    async with websockets.serve(session, "127.0.0.1", 0) as server:
        host, port = next(iter(server.sockets)).getsockname()[:2]
        stream.url = f"ws://{host}:{port}/stream"
        yield stream


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()
