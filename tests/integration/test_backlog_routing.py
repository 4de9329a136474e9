"""A burst routed through the brokers' rate limits, on the real stack: the router sees the orders
queued at each broker's executors and sends the rest elsewhere once the default broker's queue
would keep them waiting past ``routing.max_queue_wait_s``."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from nats.aio.client import Client as NatsClient

from contracts import BrokerName, RouteDecision
from tests.builders import intent_payload
from tests.conftest import Pipeline, stream_messages
from tests.integration.test_executor_flows import filled_everywhere
from workers.domain.config import parse_config, seconds_per_order
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings

SLOW = {"requests": 3, "per_seconds": 1, "share": 1}
"""Alpaca at three requests a second: its budget mints 1.8 orders a second (less the burst it
keeps, over the window and a lease), so two seconds of queue is four orders."""


async def test_a_burst_of_equities_fills_the_default_brokers_queue_then_goes_elsewhere(
    start_pipeline: Any, isolated: Settings, nc: NatsClient
) -> None:
    """Its own subjects and consumers: what earlier tests left queued does not count."""
    config = parse_config({"brokers": {"alpaca": {"rate_limit": SLOW}, "ibkr": {}}})
    pipeline: Pipeline = await start_pipeline(config, own_settings=isolated)
    subjects = isolated.subjects
    payloads = [intent_payload(strategy_id="rebalance", symbol="MSFT") for _ in range(40)]
    for payload in payloads:
        await nc.jetstream().publish(
            subjects.intent("rebalance"), json.dumps(payload).encode(), headers={"Nats-Msg-Id": payload["intent_id"]}
        )
    ids = [p["intent_id"] for p in payloads]
    db = make_engine(isolated.database_url or "", pool_size=1)
    try:
        filled = await filled_everywhere(db, ids)
    finally:
        await db.dispose()

    at = Counter(filled.values())
    fits = math.floor(2 / seconds_per_order(BrokerName.ALPACA, config)) + 1  # waits of 0 to 2 s
    assert fits == 4
    assert fits <= at["alpaca"] <= fits + 4, at  # its queue reached two seconds, then the rest went on
    assert at["ibkr"] >= 28, at
    decisions = [
        RouteDecision.model_validate_json(m)
        for m in await stream_messages(nc, subjects.stream_name("ROUTES"), f"{isolated.subject_prefix}.routes.>")
        if json.loads(m)["intent_id"] in set(ids)
    ]
    elsewhere = [d for d in decisions if d.broker is BrokerName.IBKR]
    [why, *_] = [e for e in elsewhere[-1].excluded if e.broker is BrokerName.ALPACA]
    assert why.reason_code == "queue_wait" and "orders queued" in why.reason
    alpaca_waits = [c.expected_wait_ms for d in decisions for c in d.candidates if c.broker is BrokerName.ALPACA]
    assert max(alpaca_waits) > 1000  # the queue was in the candidates' records
    assert pipeline.venues[BrokerName.ALPACA].rate.refused == 0
