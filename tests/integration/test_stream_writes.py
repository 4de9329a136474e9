"""A JetStream write that reaches no stream yet is sent again: on a cluster a stream or bucket
just created is served by each server a moment after the create returns (CI saw the router's
first config write answered "no responders"). A real server answers a subject no stream serves
yet the same way, so the window is held open here by creating the stream late."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.errors import NoStreamResponseError

from workers.platform import bus
from workers.platform.bus import jetstream

pytestmark = pytest.mark.integration


def unique() -> str:
    return f"W{uuid.uuid4().hex[:8].upper()}"


async def create_later(nc: NatsClient, stream: str, subject: str, after: float) -> None:
    await asyncio.sleep(after)
    await nc.jetstream().add_stream(name=stream, subjects=[subject])


async def test_a_write_sent_before_its_stream_is_served_lands_once(nc: NatsClient) -> None:
    stream = unique()
    subject = f"{stream.lower()}.one"
    with pytest.raises(NoStreamResponseError):  # what nats-py's own context does
        await nc.jetstream().publish(subject, b"early")
    late = asyncio.create_task(create_later(nc, stream, subject, after=0.3))
    try:
        ack = await jetstream(nc).publish(subject, b"kept", headers={"Nats-Msg-Id": stream})
        await late
        assert (ack.stream, ack.seq) == (stream, 1)
        info = await nc.jetstream().stream_info(stream)
        assert info.state.messages == 1
    finally:
        await nc.jetstream().delete_stream(stream)


async def test_a_kv_compare_and_set_sent_before_its_bucket_is_served_lands(nc: NatsClient) -> None:
    """A compare-and-set write (the router's first config write is a create) is safe to send
    again: "no responders" means no stream took it."""
    bucket = unique().lower()
    js = jetstream(nc)
    kv = await bus.open_bucket(js, bucket)
    await js.delete_stream(f"KV_{bucket}")  # the bucket as a server that has not caught up sees it
    late = asyncio.create_task(create_later(nc, f"KV_{bucket}", f"$KV.{bucket}.>", after=0.3))
    try:
        assert await kv.create("key", b"first") == 1
        await late
        assert (await kv.get("key")).value == b"first"
    finally:
        await js.delete_stream(f"KV_{bucket}")


async def test_a_stream_that_never_comes_is_reported(nc: NatsClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sent again only for a while: a subject no stream will ever serve is an error, not a hang."""
    monkeypatch.setattr(bus, "NO_STREAM_FOR_S", 0.3)
    with pytest.raises(NoStreamResponseError):
        await asyncio.wait_for(jetstream(nc).publish(f"{unique().lower()}.nobody", b"lost"), timeout=5)
