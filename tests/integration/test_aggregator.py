"""The aggregator as the system of record: idempotent under a full replay, and nothing lost or
doubled while Postgres is down."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import BrokerName
from tests.builders import OPTION, intent_payload
from tests.conftest import Pipeline, eventually, fetch_all
from tests.integration.test_failover import BrokeVenue
from tests.integration.test_walking_skeleton import publish_json
from tests.servers import Servers
from workers.aggregator.app import build_aggregator
from workers.devstack.postgres import EmbeddedPostgres
from workers.platform.db.engine import make_engine
from workers.platform.db.migrate import upgrade
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration

TABLES = {
    "multi_broker_routes": "intent_id, attempt",
    "orders": "broker_name, client_order_id",
    "trade_logs": "fill_id",
    "failover_events": "intent_id, attempt",
    "inbox": "message_id",
}


async def table_contents(db: AsyncEngine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every audit table, in a stable order (``updated_at`` aside: it says when)."""
    contents = {}
    for table, order in TABLES.items():
        rows = await fetch_all(db, f"SELECT * FROM {table} ORDER BY {order}")
        contents[table] = [{k: v for k, v in r.items() if k != "updated_at"} for r in rows]
    return contents


async def consumer_done(nc: NatsClient, stream: str, durable: str) -> bool:
    info = await nc.jetstream().consumer_info(stream, durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_replaying_every_stream_into_a_second_aggregator_changes_nothing(
    start_pipeline: Any, settings: Settings, nc: NatsClient, db: AsyncEngine
) -> None:
    """Fills, a failover and a rejection, then the ROUTES and EXECUTIONS streams replayed from
    their first message through new durable consumers: every table stays identical."""
    pipeline: Pipeline = await start_pipeline(venue_overrides={BrokerName.SCHWAB: BrokeVenue(BrokerName.SCHWAB)})
    payloads = [intent_payload(strategy_id="replay") for _ in range(10)]
    payloads += [
        intent_payload(strategy_id="replay", **OPTION),
        intent_payload(strategy_id="replay", symbol="ZZZZ", asset_class="option", quantity="1.5"),
    ]
    for payload in payloads:
        await publish_json(nc, payload, strategy="replay")
    ids = [p["intent_id"] for p in payloads]

    async def settled() -> bool:
        rows = await fetch_all(
            db,
            "SELECT status FROM orders WHERE intent_id = ANY(:ids) AND status IN ('filled', 'rejected')",
            ids=ids,
        )
        return len(rows) >= len(ids)

    await eventually(settled, timeout=30)
    await pipeline.stop()
    before = await table_contents(db)
    assert await fetch_all(db, "SELECT 1 FROM failover_events WHERE intent_id = ANY(:ids)", ids=ids)

    # The order flow's streams. (POSITIONS is left out: it keeps only the latest message per
    # broker, and the executors' last "disconnected" status may land after the aggregator stopped.)
    replay = [
        dataclasses.replace(spec, durable=f"{spec.durable}-replay")
        for spec in settings.topology.aggregator_consumers()
        if spec.stream in ("ROUTES", "EXECUTIONS")
    ]
    for spec in replay:
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_consumer(spec.stream, spec.durable)
    second = build_aggregator(settings, make_engine(settings.sqlalchemy_url()), consumers=replay)
    await second.start()
    try:
        for spec in replay:
            await eventually(lambda spec=spec: consumer_done(nc, spec.stream, spec.durable), timeout=60)  # type: ignore[misc]
        replayed = 0
        for spec in replay:
            replayed += (await nc.jetstream().consumer_info(spec.stream, spec.durable)).delivered.consumer_seq
    finally:
        await second.stop()
        for spec in replay:
            await nc.jetstream().delete_consumer(spec.stream, spec.durable)
    assert replayed > len(ids) * 3  # the whole streams went through again, not just this test's
    assert await table_contents(db) == before


async def test_postgres_down_for_thirty_seconds_loses_and_doubles_nothing(
    settings: Settings, servers: Servers, nc: NatsClient, tmp_path: Path, start_pipeline: Any
) -> None:
    """The aggregator holds its batch while the database is down, says so in the worker-status
    bucket, and catches up after the restart: every intent has exactly its rows."""
    postgres = EmbeddedPostgres(tmp_path / "outage-pg")
    postgres.start()
    try:
        upgrade(postgres.url())
        own = settings.model_copy(update={"database_url": postgres.url()})
        # The shared pipeline's aggregator would write to the session database: this test runs
        # its own aggregator on its own database, beside the router and executors.
        await with_own_aggregator(await start_pipeline(), own, make_engine(own.sqlalchemy_url()))
        db = make_engine(postgres.url(), pool_size=2)

        ids: list[str] = []

        async def publish_some(n: int) -> None:
            for _ in range(n):
                payload = intent_payload(strategy_id="pgdown")
                ids.append(payload["intent_id"])
                await publish_json(nc, payload, strategy="pgdown")
                await asyncio.sleep(0.02)

        await publish_some(20)
        await eventually(lambda: _count(db, "orders", ids, "filled", 20), timeout=20)
        await db.dispose()
        postgres.stop()
        await publish_some(40)  # routed, placed and filled while nothing can be written
        kv = await nc.jetstream().key_value("mbx_worker_status")
        state = await eventually(lambda: _state(kv, "database_unavailable"), timeout=10)
        assert state["error"]
        await asyncio.sleep(30)
        postgres.start()
        db = make_engine(postgres.url(), pool_size=2)
        await publish_some(20)
        await eventually(lambda: _count(db, "orders", ids, "filled", len(ids)), timeout=60)
        await eventually(lambda: _state(kv, "ok"), timeout=10)
        for table, expected in (("orders", 1), ("multi_broker_routes", 1), ("trade_logs", 1)):
            rows = await fetch_all(
                db,
                f"SELECT intent_id, count(*) AS n FROM {table} WHERE intent_id = ANY(:ids) GROUP BY intent_id",
                ids=ids,
            )
            assert sorted(r["intent_id"] for r in rows) == sorted(ids), table
            assert {r["n"] for r in rows} == {expected}, table
        await db.dispose()
    finally:
        postgres.stop()


async def with_own_aggregator(pipeline: Pipeline, own: Settings, engine: AsyncEngine) -> None:
    """Swap the shared pipeline's aggregator for one writing to this test's own database."""
    [shared] = [w for w in pipeline.workers if w.name == "aggregator"]
    await shared.stop()
    pipeline.workers.remove(shared)
    aggregator = build_aggregator(own, engine)
    await aggregator.start()
    pipeline.workers.append(aggregator)


async def _count(db: AsyncEngine, table: str, ids: list[str], status: str, expected: int) -> bool:
    rows = await fetch_all(db, f"SELECT 1 FROM {table} WHERE intent_id = ANY(:ids) AND status = :s", ids=ids, s=status)
    return len(rows) >= expected


async def _state(kv: Any, expected: str) -> dict[str, Any] | None:
    import json

    try:
        value = json.loads((await kv.get("aggregator")).value)
    except Exception:
        return None
    return value if value["state"] == expected else None


def _postgres_tree(postgres: EmbeddedPostgres) -> list[int]:
    """The postmaster and every backend it runs."""
    assert postgres.proc is not None
    root = postgres.proc.pid
    pids = [root]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == root:
            pids.append(int(stat.parent.name))
    return pids


async def test_a_hung_postgres_is_an_outage_and_nothing_is_lost(
    settings: Settings, nc: NatsClient, tmp_path: Path, start_pipeline: Any
) -> None:
    """Every PostgreSQL process stopped (SIGSTOP): the aggregator's writes time out, it reports
    database_unavailable instead of hanging with its state ok, and after SIGCONT every intent
    has exactly one row of each kind."""
    postgres = EmbeddedPostgres(tmp_path / "hung-pg")
    postgres.start()
    try:
        upgrade(postgres.url())
        own = settings.model_copy(update={"database_url": postgres.url(), "db_timeout_s": 2.0})
        await with_own_aggregator(await start_pipeline(), own, make_engine(own.sqlalchemy_url(), connect_timeout=2))
        db = make_engine(postgres.url(), pool_size=2)
        ids: list[str] = []

        async def publish_some(n: int) -> None:
            for _ in range(n):
                payload = intent_payload(strategy_id="pghang")
                ids.append(payload["intent_id"])
                await publish_json(nc, payload, strategy="pghang")

        await publish_some(10)
        await eventually(lambda: _count(db, "orders", ids, "filled", 10), timeout=20)
        await db.dispose()
        frozen = _postgres_tree(postgres)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            await publish_some(20)

            async def reported(expected: str) -> dict[str, Any] | None:
                kv = await nc.jetstream().key_value("mbx_worker_status")
                return await _state(kv, expected)

            state = await eventually(lambda: reported("database_unavailable"), timeout=20)
            assert "did not answer within 2s" in state["error"]
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        db = make_engine(postgres.url(), pool_size=2)
        await eventually(lambda: _count(db, "orders", ids, "filled", len(ids)), timeout=60)
        await eventually(lambda: reported("ok"), timeout=20)
        for table in ("orders", "multi_broker_routes", "trade_logs"):
            # Each kind of message has a consumer of its own: routes may land after the fills.
            query = f"SELECT intent_id, count(*) AS n FROM {table} WHERE intent_id = ANY(:ids) GROUP BY intent_id"

            async def every_intent(query: str = query) -> list[Any]:
                rows = await fetch_all(db, query, ids=ids)
                return rows if len(rows) == len(ids) else []

            rows = await eventually(every_intent, timeout=60)
            assert sorted(r["intent_id"] for r in rows) == sorted(ids), table
            assert {r["n"] for r in rows} == {1}, table
        await db.dispose()
    finally:
        postgres.stop()
