"""A broker's daily order limit (Schwab: 4,000 order calls a day), counted for every replica in
KV: new orders stop at 90% of it and go to other brokers, cancels may use the rest, and the
count starts again the next day."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from contracts import BrokerName
from tests.builders import OPTION, intent_payload
from tests.conftest import eventually, fetch_all
from workers.domain.config import parse_config
from workers.executor.budget import DailyOrderBudget, DailyOrdersSpent
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration


async def test_new_orders_stop_at_ninety_percent_cancels_may_use_the_rest(nc: NatsClient) -> None:
    now = [time.time()]
    bucket = f"daily_{uuid.uuid4().hex[:8]}"
    replicas = [DailyOrderBudget(nc.jetstream, bucket, "schwab", 20, clock=lambda: now[0]) for _ in range(2)]

    async def place_until_spent(budget: DailyOrderBudget) -> int:
        placed = 0
        while True:
            try:
                await budget.take(placement=True)
            except DailyOrdersSpent:
                return placed
            placed += 1

    counts = await asyncio.gather(*(place_until_spent(b) for b in replicas))
    assert sum(counts) == 18  # 90% of 20, between both replicas
    assert "18 of the day's 20 order calls are used" in replicas[0].spent_reason()
    for _ in range(2):
        await replicas[1].take(placement=False)  # cancels have the rest
    with pytest.raises(DailyOrdersSpent):
        await replicas[1].take(placement=False)

    now[0] += 86_400  # the next day
    assert replicas[0].spent_reason() == ""
    await replicas[0].take(placement=True)
    await nc.jetstream().delete_key_value(bucket)


async def test_past_the_daily_limit_orders_go_to_another_broker(
    start_pipeline: Any, isolated: Settings, nc: NatsClient
) -> None:
    """Its own subjects and KV: Schwab orders of earlier tests today do not count."""
    config = parse_config({"brokers": {"schwab": {"orders_per_day": 3}, "alpaca": {}}})
    pipeline = await start_pipeline(config, own_settings=isolated)
    sizes = [11, 12, 13]
    payloads = [intent_payload(**(OPTION | {"quantity": str(n)}), broker="schwab") for n in sizes]
    ids = [p["intent_id"] for p in payloads]

    async def publish(payload: dict[str, Any]) -> None:
        subject = isolated.subjects.intent(payload["strategy_id"])
        await nc.jetstream().publish(
            subject, json.dumps(payload).encode(), headers={"Nats-Msg-Id": payload["intent_id"]}
        )

    db = make_engine(isolated.database_url or "", pool_size=1)

    async def filled(n: int) -> list[Any]:
        rows = await fetch_all(
            db, "SELECT intent_id, broker_name FROM orders WHERE intent_id = ANY(:i) AND status = 'filled'", i=ids
        )
        return rows if len(rows) == n else []

    try:
        for payload in payloads[:2]:
            await publish(payload)
        first = await eventually(lambda: filled(2))
        assert {r["broker_name"] for r in first} == {"schwab"}  # 2 = 90% of 3 placements
        await publish(payloads[2])
        rows = await eventually(lambda: filled(3))
        assert {r["intent_id"]: r["broker_name"] for r in rows}[ids[2]] == "alpaca"
        [failover] = await eventually(
            lambda: fetch_all(db, "SELECT * FROM failover_events WHERE intent_id = :i", i=ids[2])
        )
    finally:
        await db.dispose()
    assert failover["failed_broker"] == "schwab" and "order calls are used" in failover["reason"]
    at_schwab = sorted(int(o.quantity) for o in await pipeline.venues[BrokerName.SCHWAB].book.all())
    assert at_schwab == sizes[:2]  # the third was never sent there
