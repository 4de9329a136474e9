"""The executor's heartbeat goes on through a bus that does not answer (a stream election)."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.errors import NoStreamResponseError

from contracts import BrokerName, BrokerStatus
from workers.executor import app
from workers.executor.app import build_executor
from workers.platform.settings import Settings
from workers.venues.simulated.venue import SimulatedVenue


class ElectingBucket:
    """A status bucket whose stream is electing a leader: the first write gets no answer, the
    second finds no stream, the third is stored."""

    def __init__(self) -> None:
        self.sent: list[BrokerStatus] = []
        self.stored: list[BrokerStatus] = []

    async def put(self, key: str, value: bytes) -> int:
        status = BrokerStatus.model_validate_json(value)
        self.sent.append(status)
        if len(self.sent) == 1:
            await asyncio.Event().wait()  # never answered: the write times out
        if len(self.sent) == 2:
            raise NoStreamResponseError
        self.stored.append(status)
        return len(self.stored)


async def test_a_heartbeat_the_bus_does_not_take_is_sent_again_built_anew_until_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A heartbeat write that times out or finds no stream is tried again, each time with a fresh
    ``last_seen``, so the one stored says the executor is alive now, with its view of the broker."""
    monkeypatch.setattr(app, "HEARTBEAT_WRITE_TIMEOUT", 0.05)
    monkeypatch.setattr(app, "HEARTBEAT_RETRY_PAUSE", 0.01)
    venue = SimulatedVenue(BrokerName.ALPACA)
    await venue.connect()
    executor = build_executor(Settings(nats_url="nats://127.0.0.1:1"), BrokerName.ALPACA, venue)
    bucket = ElectingBucket()
    executor._status_kv = bucket  # the bucket the executor writes its heartbeat to
    await executor.beat()
    assert len(bucket.sent) == 3
    assert len(bucket.stored) == 1
    stored = bucket.stored[0]
    assert stored.last_seen > bucket.sent[0].last_seen
    assert stored.connected is True
