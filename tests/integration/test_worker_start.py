"""A worker whose start meets NATS unable to answer (a cluster electing a leader, a stream not
served yet) tries again, and then handles every message once: what `mbx worker` and `mbx up`
rely on when a cluster is slow to settle."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.errors import NoStreamResponseError

from tests.builders import intent_payload
from tests.conftest import Pipeline, eventually, fetch_all
from workers import entry
from workers.domain.config import MbxConfig
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings
from workers.router import app as router_app

pytestmark = pytest.mark.integration


async def test_a_router_whose_start_failed_half_way_routes_each_intent_once(
    isolated: Settings, nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = Pipeline(isolated, MbxConfig())
    router, others = pipeline.workers[0], pipeline.workers[1:]
    opened = router_app.open_bucket
    failures = []

    async def open_bucket(js: Any, bucket: str, **kwargs: Any) -> Any:
        # The second bucket the router opens: its config is loaded, its exposure not yet.
        if bucket == isolated.subjects.exposure_bucket and not failures:
            failures.append(bucket)
            raise NoStreamResponseError
        return await opened(js, bucket, **kwargs)

    monkeypatch.setattr(router_app, "open_bucket", open_bucket)
    pipeline.workers = others
    try:
        await pipeline.start()
        pipeline.workers = [router, *others]  # stopped with the rest, however far it got
        await asyncio.wait_for(entry._start_with_retry(router, asyncio.Event()), timeout=30)
        assert failures == [isolated.subjects.exposure_bucket]
        await route_and_fill(isolated, nc)
    finally:
        await pipeline.stop()


async def route_and_fill(isolated: Settings, nc: NatsClient) -> None:
    """Twenty intents: each routed once and filled."""
    payloads = [intent_payload(strategy_id="restart", quantity=str(n)) for n in range(1, 21)]
    js = nc.jetstream()
    for payload in payloads:
        await js.publish(
            isolated.subjects.intent("restart"),
            json.dumps(payload).encode(),
            headers={"Nats-Msg-Id": payload["intent_id"]},
        )
    ids = [p["intent_id"] for p in payloads]
    engine = make_engine(isolated.database_url or "", pool_size=1)
    try:

        async def filled() -> list[Any]:
            rows = await fetch_all(engine, "SELECT intent_id, status FROM orders WHERE intent_id = ANY(:i)", i=ids)
            return rows if len(rows) == len(ids) and {r["status"] for r in rows} == {"filled"} else []

        orders = await eventually(filled, timeout=30)
        assert sorted(r["intent_id"] for r in orders) == sorted(ids)
        routes = await fetch_all(engine, "SELECT intent_id FROM multi_broker_routes WHERE intent_id = ANY(:i)", i=ids)
        assert sorted(r["intent_id"] for r in routes) == sorted(ids)
    finally:
        await engine.dispose()


async def test_mbx_up_waits_while_nats_cannot_answer_instead_of_exiting(
    start_pipeline: Any, isolated: Settings, nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mbx up` makes the streams, then waits for every worker: on a cluster that is still
    electing leaders either step may be told "no leader" or time out. Each is asked again."""
    from nats.errors import TimeoutError as NatsTimeoutError
    from nats.js.errors import ServiceUnavailableError

    from workers.devstack import stack as devstack

    def failing_once(real: Any, error: type[Exception]) -> Any:
        calls: list[int] = []

        async def call(*args: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise error
            return await real(*args)

        call.calls = calls  # type: ignore[attr-defined]
        return call

    ensure = failing_once(devstack.ensure_streams, ServiceUnavailableError)
    monkeypatch.setattr(devstack, "ensure_streams", ensure)
    await asyncio.wait_for(devstack._ensure_topology(isolated.nats_url or "", isolated), timeout=30)
    assert len(ensure.calls) == 2
    info = await nc.jetstream().stream_info(isolated.subjects.stream_name("ORDERS"))
    assert info.config.name == isolated.subjects.stream_name("ORDERS")

    await start_pipeline(MbxConfig(), own_settings=isolated)
    not_ready = failing_once(devstack._not_ready, NatsTimeoutError)
    monkeypatch.setattr(devstack, "_not_ready", not_ready)
    up = devstack.Stack(isolated, MbxConfig())
    await asyncio.wait_for(up._wait_ready(isolated.nats_url or ""), timeout=30)
    assert len(not_ready.calls) >= 2
