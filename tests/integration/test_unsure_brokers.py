"""The router on a real server while brokers' heartbeats go stale together: it holds intents
(brokers are *unsure*, not down) for up to ``routing.hold_when_unsure_s``, then decides."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from contracts import BrokerName, BrokerStatus, ExecutionReport
from tests.builders import CRYPTO, OPTION, intent_payload
from tests.conftest import Pipeline, eventually, fetch_all, simulated_venue
from workers.domain.config import parse_config
from workers.entry import build_executor_worker
from workers.platform.bus import read_stream
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration


async def silence(nc: NatsClient, settings: Settings, age_s: float) -> None:
    """Every broker's last heartbeat said "up" ``age_s`` seconds ago (the executors went quiet
    together, as during a stream election)."""
    kv = await nc.jetstream().key_value(settings.subjects.status_bucket)
    for broker in BrokerName:
        status = BrokerStatus(
            broker=broker,
            connected=True,
            latency_ms=10.0,
            error_rate=0.0,
            rate_limit_headroom=1.0,
            last_seen=datetime.now(UTC) - timedelta(seconds=age_s),
        )
        await kv.put(str(broker), status.model_dump_json().encode())


async def publish(nc: NatsClient, settings: Settings, payloads: list[dict[str, Any]]) -> None:
    for payload in payloads:
        await nc.jetstream().publish(
            settings.subjects.intent("strat1"),
            json.dumps(payload).encode(),
            headers={"Nats-Msg-Id": payload["intent_id"]},
        )


async def test_intents_are_held_while_every_heartbeat_is_stale_and_routed_when_the_executors_speak(
    isolated: Settings, start_pipeline: Callable[..., Awaitable[Pipeline]], nc: NatsClient
) -> None:
    """Heartbeats gone stale together are the bus's trouble, not the brokers': the router holds
    the intents instead of rejecting them, and routes each to its usual broker once the
    executors are heard from again."""
    config = parse_config({"routing": {"startup_grace_s": 0}})
    pipeline = await start_pipeline(config, own_settings=isolated, executors=False)
    await silence(nc, isolated, age_s=7)
    payloads = [intent_payload(), intent_payload(**CRYPTO), intent_payload(**OPTION)]
    await publish(nc, isolated, payloads)
    js = nc.jetstream()

    async def held() -> bool:
        info = await js.consumer_info(isolated.subjects.stream_name("ORDERS"), "router")
        return info.num_ack_pending == len(payloads)  # every one in hand, none decided

    await eventually(held)
    executors = [
        build_executor_worker(isolated, b, simulated_venue(b, pipeline.config), pipeline.config) for b in BrokerName
    ]
    for executor in executors:
        await executor.start()
    engine = make_engine(isolated.database_url or "", pool_size=1)
    try:

        async def routed() -> dict[str, str] | None:
            rows = await fetch_all(engine, "SELECT intent_id, broker_name FROM multi_broker_routes")
            return {r["intent_id"]: r["broker_name"] for r in rows} if len(rows) == len(payloads) else None

        brokers = await eventually(routed, timeout=20)
        assert [brokers[p["intent_id"]] for p in payloads] == ["alpaca", "coinbase", "schwab"]
    finally:
        await engine.dispose()
        for executor in executors:
            await executor.stop()


async def test_a_held_intent_is_decided_with_what_the_router_knows_once_the_hold_runs_out(
    isolated: Settings, start_pipeline: Callable[..., Awaitable[Pipeline]], nc: NatsClient
) -> None:
    """Past ``routing.hold_when_unsure_s`` a broker still silent is down: the intent is rejected
    with each broker's stale heartbeat as the reason."""
    config = parse_config({"routing": {"startup_grace_s": 0, "hold_when_unsure_s": 2}})
    await start_pipeline(config, own_settings=isolated, executors=False)
    await silence(nc, isolated, age_s=6)
    payload = intent_payload()
    await publish(nc, isolated, [payload])
    subjects = isolated.subjects

    async def rejected() -> ExecutionReport | None:
        stored = await read_stream(
            nc.jetstream(), subjects.stream_name("EXECUTIONS"), subjects.execution(None, "rejected", "strat1")
        )
        reports = [ExecutionReport.model_validate_json(m.data) for m in stored]
        return next((r for r in reports if r.intent_id == payload["intent_id"]), None)

    report = await eventually(rejected, timeout=15)
    assert report.reason_code == "no_eligible_broker"
    assert "alpaca's last heartbeat is" in report.reason
    assert "unsure" not in report.reason
