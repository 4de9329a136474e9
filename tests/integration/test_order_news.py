"""What the broker says of an order reaches the ledger without loss, on real NATS: a reply
behind the ledger is no news, news that comes before the ledger entry is kept until it exists,
one order that cannot be read does not stop a settling pass, and an account read that hangs ends
at the broker call's deadline."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from decimal import Decimal
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from contracts import BrokerName, OrderStatus
from tests.builders import intent_payload
from tests.conftest import Pipeline, eventually
from workers.platform.bus import read_bucket
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def pipeline(start_pipeline: Any, isolated: Settings) -> Pipeline:
    """A pipeline on subjects, buckets and a database of its own: earlier tests' positions and
    queues at Alpaca once sent these resting orders to another broker."""
    started: Pipeline = await start_pipeline(own_settings=isolated)
    return started


def alpaca_executor(pipeline: Pipeline) -> Any:
    from workers.executor.app import ExecutorWorker

    [executor] = [w for w in pipeline.workers if isinstance(w, ExecutorWorker) and w.venue.broker == "alpaca"]
    return executor


async def resting_order(pipeline: Pipeline, nc: NatsClient, strategy: str) -> tuple[Any, Any]:
    """A resting limit order placed and recorded as usual: (its intent payload, its ledger entry)."""
    payload = intent_payload(order_type="limit", limit_price="1.00", strategy_id=strategy, broker="alpaca")
    subject = pipeline.settings.subjects.intent(strategy)
    await nc.jetstream().publish(subject, json.dumps(payload).encode(), headers={"Nats-Msg-Id": payload["intent_id"]})
    executor = alpaca_executor(pipeline)

    async def working() -> Any:
        entry = await executor.ledger.get(payload["intent_id"])
        return entry if entry is not None and entry.working else None

    return payload, await eventually(working)


async def forget_entry(pipeline: Pipeline, nc: NatsClient, intent_id: str) -> None:
    """As if the delivery that placed the order had not recorded it yet."""
    bucket = pipeline.settings.topology.order_ledger_bucket
    kv = await nc.jetstream().key_value(bucket)
    token = base64.urlsafe_b64encode(intent_id.encode()).decode().rstrip("=")
    for key, _ in await read_bucket(nc.jetstream(), bucket):
        if key.endswith(token):
            await kv.purge(key)


async def test_a_placement_reply_that_says_pending_new_is_recorded_and_followed(
    pipeline: Pipeline, nc: NatsClient
) -> None:
    """Alpaca answers a resting order's POST with ``pending_new`` (submitted): the order is
    recorded as accepted (no InvalidTransition, no redelivery) and its later fill is reported."""
    executor = alpaca_executor(pipeline)
    venue = pipeline.venues[BrokerName.ALPACA]
    payload, recorded = await resting_order(pipeline, nc, "pendingnew")
    await forget_entry(pipeline, nc, payload["intent_id"])
    reply = await venue.get_order(recorded.broker_order_id)
    assert reply is not None
    reply = dataclasses.replace(reply, status=OrderStatus.SUBMITTED)

    await executor.handlers._record_order(recorded.decision, reply, None, 0)
    entry = await executor.ledger.get(payload["intent_id"])
    assert entry is not None and entry.working and entry.status is OrderStatus.ACCEPTED

    await venue.trade(recorded.broker_order_id)

    async def filled() -> Any:
        entry = await executor.ledger.get(payload["intent_id"])
        return entry if entry is not None and entry.status is OrderStatus.FILLED else None

    await eventually(filled)


async def test_stream_news_that_comes_before_the_ledger_entry_is_applied_once_it_exists(
    pipeline: Pipeline, nc: NatsClient
) -> None:
    """A partial fill the stream tells of while the placing delivery has not recorded the order
    yet is kept, and reported as soon as the order is recorded (not at the next poll)."""
    executor = alpaca_executor(pipeline)
    venue = pipeline.venues[BrokerName.ALPACA]
    payload, recorded = await resting_order(pipeline, nc, "earlynews")
    placed = await venue.get_order(recorded.broker_order_id)
    assert placed is not None
    placed = dataclasses.replace(placed, fills=list(placed.fills))
    await forget_entry(pipeline, nc, payload["intent_id"])
    await venue.trade(recorded.broker_order_id, Decimal(4))
    partial = await venue.get_order(recorded.broker_order_id)
    assert partial is not None and partial.status is OrderStatus.PARTIALLY_FILLED

    assert await executor.handlers.advance(payload["intent_id"], partial) is None  # nothing to report on yet
    await executor.handlers._record_order(recorded.decision, placed, None, 0)
    entry = await executor.ledger.get(payload["intent_id"])
    assert entry is not None
    assert (entry.status, entry.filled_quantity, entry.fill_count) == (OrderStatus.PARTIALLY_FILLED, 4, 1)


async def test_one_order_that_cannot_be_read_does_not_stop_the_settling_pass(
    pipeline: Pipeline, nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker fails to read one working order: it is logged and skipped, the others are
    settled in the same pass."""
    executor = alpaca_executor(pipeline)
    venue = pipeline.venues[BrokerName.ALPACA]
    _, bad = await resting_order(pipeline, nc, "badread")
    good_payload, good = await resting_order(pipeline, nc, "goodread")
    read = executor.venue.get_order

    async def get_order(broker_order_id: str) -> Any:
        if broker_order_id == bad.broker_order_id:
            raise ValueError("the broker sent an order mbx cannot read")
        return await read(broker_order_id)

    monkeypatch.setattr(executor.venue, "get_order", get_order)
    await venue.trade(good.broker_order_id)
    await executor.handlers.reconcile()
    entry = await executor.ledger.get(good_payload["intent_id"])
    assert entry is not None and entry.status is OrderStatus.FILLED


async def test_an_account_read_that_hangs_ends_at_the_broker_call_deadline(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A position snapshot whose account read never answers fails after ``request_timeout_s``."""
    executor = alpaca_executor(pipeline)

    async def hang() -> Any:
        await asyncio.Event().wait()

    monkeypatch.setattr(executor.venue, "get_account", hang)
    monkeypatch.setattr(executor.handlers, "request_timeout", 0.3)
    with pytest.raises(TimeoutError, match="did not answer within"):
        await asyncio.wait_for(executor.snapshot(), 5)
