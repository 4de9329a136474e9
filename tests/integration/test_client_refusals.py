"""A subscription the server refuses is reported by the client at once, naming that subject,
however the server's answers are split on the wire.

nats-py's ``flush()`` writes its PING straight to the socket, ahead of a SUB still queued for
its flusher task. The server then answers PONG before it has read the SUB, and the refusal
arrives after the flush returned. Here a proxy hands the client every PONG on its own, a little
ahead of what follows (as a loaded machine or a network does now and then), so that ordering is
seen every time rather than once in a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from contracts.client import MbxClient, SubscribeDenied
from workers.devstack.nats import EmbeddedNats

pytestmark = pytest.mark.integration

PONG = b"PONG\r\n"


@pytest.fixture(scope="module")
def password() -> str:
    return secrets.token_hex(16)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, password: str) -> Iterator[EmbeddedNats]:
    """A plain-text server (the proxy must see the protocol) whose one user reads only ``mine.>``."""
    users = (
        f'authorization {{ users = [ {{ user: "reader", password: "{password}", '
        'permissions: { publish: { allow: ["mine.>"] }, subscribe: { allow: ["mine.>", "_INBOX.>"] } } } ] }'
    )
    server = EmbeddedNats(Path(tmp_path_factory.mktemp("refusals")) / "nats", extra_config=users)
    server.start()
    yield server
    server.stop()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pong_first: bool) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            while pong_first and PONG in data:
                head, data = data.split(PONG, 1)
                writer.write(head + PONG)
                await writer.drain()
                await asyncio.sleep(0.05)  # the PONG is handled before the rest arrives
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def pong_first_proxy(upstream_port: int) -> AsyncIterator[int]:
    pumps: list[asyncio.Task[None]] = []

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        pumps.append(asyncio.create_task(_pump(client_reader, server_writer, pong_first=False)))
        pumps.append(asyncio.create_task(_pump(server_reader, client_writer, pong_first=True)))

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:
        yield proxy.sockets[0].getsockname()[1]
    finally:
        proxy.close()
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def test_a_refused_subscription_is_reported_at_once_for_the_subject_refused(
    server: EmbeddedNats, password: str
) -> None:
    async with pong_first_proxy(server.port) as port:
        url = f"nats://127.0.0.1:{port}"
        async with MbxClient.connect(url, prefix="other", user="reader", password=password) as client:
            for attempt in range(3):
                with pytest.raises(SubscribeDenied, match=r"reading other\.routes\.>"):
                    await client.track(f"i-{attempt}")  # everyone's routes: refused, nothing else tried
            assert client.refusals == ['nats: permissions violation for subscription to "other.routes.>"'] * 3
