"""IBKR order ids kept in KV: two executor replicas picking ids at once never pick the same one,
each intent's id is readable both ways, and ids stay above what the gateway says is next."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from nats.aio.client import Client as NatsClient

from workers.venues.ibkr.order_ids import KvOrderIds

pytestmark = pytest.mark.integration


async def test_two_replicas_never_pick_the_same_order_id(nc: NatsClient) -> None:
    bucket = f"ids_{uuid.uuid4().hex[:8]}"
    replicas = [KvOrderIds(nc.jetstream, bucket) for _ in range(2)]
    intents = [f"intent-{n}" for n in range(60)]
    ids = await asyncio.gather(*(replicas[n % 2].assign(i, at_least=5) for n, i in enumerate(intents)))
    assert len(set(ids)) == len(intents) and min(ids) >= 5
    for intent, order_id in zip(intents, ids, strict=True):
        assert await replicas[0].of_intent(intent) == order_id
        assert await replicas[1].intent_of(order_id) == intent
    assert await replicas[0].assign("later", at_least=1) == max(ids) + 1  # a rolled-back nextValidId
    assert await replicas[0].of_intent("never") is None
    await nc.jetstream().delete_key_value(bucket)
