"""Reading a stream leaves no consumer behind: nats-server 2.15 allows 1000 consumers per stream
by default, and a broker without client order ids is looked up by reading its book."""

from __future__ import annotations

import uuid

import pytest
from nats.aio.client import Client as NatsClient

from workers.platform.bus import read_stream

pytestmark = pytest.mark.integration

READS = 1100
"""More reads than the server's default consumer limit per stream."""


async def test_more_reads_than_a_stream_allows_consumers(nc: NatsClient) -> None:
    js = nc.jetstream()
    stream = f"READS_{uuid.uuid4().hex[:8].upper()}"
    await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
    try:
        await js.publish(f"{stream.lower()}.one", b"kept")
        for _ in range(READS):
            [message] = await read_stream(js, stream, f"{stream.lower()}.>")
            assert message.data == b"kept"
        info = await js.stream_info(stream)
        assert info.state.consumer_count == 0
    finally:
        await js.delete_stream(stream)
