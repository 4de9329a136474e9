"""Crash test: the executor is killed at every point of its work, and restarted; every intent
still ends in a terminal state, and the broker's own book holds exactly one order per intent."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.builders import intent_payload, new_intent_id
from tests.conftest import fetch_all
from tests.fakes.alpaca import FakeAlpaca
from tests.fakes.ibkr import FakeGateway
from tests.fakes.ibkr_bridge import BRIDGE_ENV, serve_gateway
from tests.fakes.schwab import FakeSchwab
from tests.fakes.serve import serve
from tests.fakes.stream import serve_stream
from tests.integration.test_walking_skeleton import publish_json
from tests.servers import Servers
from workers.domain.config import parse_config
from workers.venues.schwab.tokens import TokenStore

pytestmark = pytest.mark.integration

INTENTS = 200
IBKR_EXECUTOR = "tests.chaos.ibkr_executor"
SAME_SIZE_INTENTS = 120
"""Identical orders go one at a time (the shape lock): fewer, still past every failpoint."""
# Each executor run dies at one point: before sending, after sending but before reporting,
# after reporting but before the ack, then twice at a random moment (SIGKILL), then runs clean.
PLAN: list[str | None] = ["before_place:15", "after_place:25", "after_report:35", "random", "random", None]
SAME_SIZE_PLAN: list[str | None] = ["before_place:10", "after_place:20", "after_report:30", None]
"""Identical orders wait for a killed holder's redelivery (the 10 s ack wait) at every crash:
the three failpoints, without the random kills, keep that test at the length of the others."""


async def start_executor(
    servers: Servers, log: Path, failpoints: str | None, broker: str, adapter: str = "", module: str = "workers"
) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MBX_")}
    env.update({"MBX_NATS_URL": servers.nats_url, "MBX_LOG_FORMAT": "json", "MBX_LOG_LEVEL": "WARNING"})
    env.update({"ALPACA_API_KEY": FAKE_KEYS[0], "ALPACA_SECRET_KEY": FAKE_KEYS[1]})
    env.update({"SCHWAB_APP_KEY": FakeSchwab.app_key, "SCHWAB_APP_SECRET": FakeSchwab.app_secret})
    env["MBX_SCHWAB_TOKEN_FILE"] = str(log.parent / "schwab-token.json")
    if "adapter: schwab" in adapter:
        env["MBX_LIVE"] = "1"  # Schwab has no paper environment (here: its fake)
    # A broker's documented rate limit (Schwab: 120 a minute) would make this test wait on the
    # rate budget for minutes; what it tests is crash safety, so the limit is raised.
    config = log.parent / "executor.yaml"
    config.write_text(
        f"brokers:\n  {broker}:\n    rate_limit: {{requests: 100000, per_seconds: 1}}\n    orders_per_day: 1000000000\n"
        "    paper_cash: 1000000000000000\n" + adapter
    )
    env["MBX_CONFIG_FILE"] = str(config)
    if failpoints and failpoints != "random":
        env["MBX_FAILPOINTS"] = failpoints
    env["MBX_LOG_LEVEL"] = "INFO"
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            "worker",
            "executor",
            "--broker",
            broker,
            env=env,
            stdout=out,
            stderr=out,
        )


FAKE_KEYS = ("PKCRASHTEST0001", "crash-test-secret")


@pytest.mark.parametrize("venue", ["alpaca-over-http", "schwab-over-http", "ibkr-over-bridge"])
async def test_executor_killed_at_every_point_places_each_intent_exactly_once(
    start_pipeline: Any, nc: NatsClient, db: AsyncEngine, servers: Servers, tmp_path: Path, venue: str
) -> None:
    """Each real adapter against its fake broker, the executor a process killed at every point
    of its work. Alpaca refuses a repeated client order id (422), over real HTTP. Schwab has none
    and would take a blind retry as a second order: every intent the same size, only looking
    before placing, the shape lock and the attributions keep its book clean. IBKR's gateway lives
    in the test and is reached across processes; a resent order id is refused (error 103). The
    simulated brokers are killed the same way in the worker-kill chaos test
    (tests/chaos/test_worker_kills.py)."""
    broker = venue.split("-", maxsplit=1)[0]
    if venue == "ibkr-over-bridge":
        gateway = FakeGateway(cash=Decimal(10**15))
        async with serve_gateway(gateway) as address:
            os.environ[BRIDGE_ENV] = address  # the executor processes inherit it
            try:
                ids, _ = await crash_repeatedly(
                    start_pipeline, nc, db, servers, tmp_path, broker, "    adapter: ibkr\n", module=IBKR_EXECUTOR
                )
            finally:
                del os.environ[BRIDGE_ENV]
        # One order per intent at the gateway, whatever was resent (a resent id is refused as 103).
        refs = sorted(o.order.orderRef for o in gateway.orders.values() if o.order.orderRef in set(ids))
        assert refs == sorted(ids)
        return
    if venue == "schwab-over-http":
        schwab = FakeSchwab(cash=Decimal(10**15))
        TokenStore(tmp_path / "schwab-token.json").save_login(schwab.issue_tokens())
        with serve(schwab.handle) as (url, lock):
            adapter = (
                f"    adapter: schwab\n    base_url: {url}\n"
                '    credentials: {app_key: "${SCHWAB_APP_KEY}", app_secret: "${SCHWAB_APP_SECRET}"}\n'
            )
            ids, sizes = await crash_repeatedly(
                start_pipeline, nc, db, servers, tmp_path, broker, adapter, same_size=True
            )
            with lock:
                ours = {
                    str(o["orderId"])
                    for o in schwab.orders.values()
                    if o["orderLegCollection"][0]["instrument"]["symbol"] == "AAPL" and o["quantity"] == sizes[0]
                }
        rows = await fetch_all(db, "SELECT broker_order_id FROM orders WHERE intent_id = ANY(:ids)", ids=ids)
        # One order at the broker per intent, each intent's own: none doubled, none shared.
        assert len(ours) == SAME_SIZE_INTENTS and sorted(r["broker_order_id"] for r in rows) == sorted(ours)
        return
    if venue == "alpaca-over-http":
        fake = FakeAlpaca(*FAKE_KEYS, cash=Decimal(10**15))
        async with serve_stream(fake) as stream:
            with serve(fake.handle) as (url, _lock):
                adapter = (
                    f"    adapter: alpaca\n    base_url: {url}\n    stream_url: {stream.url}\n"
                    '    credentials: {api_key: "${ALPACA_API_KEY}", secret_key: "${ALPACA_SECRET_KEY}"}\n'
                )
                ids, _ = await crash_repeatedly(start_pipeline, nc, db, servers, tmp_path, broker, adapter)
        # One order per intent (the shared consumer may also hand this executor earlier tests' routes).
        assert sorted(o["client_order_id"] for o in fake.orders.values() if o["client_order_id"] in set(ids)) == sorted(
            ids
        )
        return


async def crash_repeatedly(
    start_pipeline: Any,
    nc: NatsClient,
    db: AsyncEngine,
    servers: Servers,
    tmp_path: Path,
    broker: str,
    adapter: str = "",
    *,
    same_size: bool = False,
    module: str = "workers",
) -> tuple[list[str], list[int]]:
    """Run the executor through its plan while its intents flow; the intents' ids and sizes (each
    its own, or with ``same_size`` one size for all, unlike any other test's)."""
    plan = SAME_SIZE_PLAN if same_size else PLAN
    rng = random.Random(20261121)
    await start_pipeline(parse_config({"brokers": {broker: {}}}), executors=False)
    log = tmp_path / "executor.log"
    runs = 0
    executor = await start_executor(servers, log, plan[0], broker, adapter, module)
    count = SAME_SIZE_INTENTS if same_size else INTENTS
    ids = [new_intent_id("crash") for _ in range(count)]
    # Schwab orders can only be matched by symbol, side and size: give each intent its own size.
    sizes = rng.sample(range(1, 100_000), count)
    if same_size:
        sizes = [100_000 + rng.randrange(100_000)] * count

    async def everything_final() -> bool:
        rows = await fetch_all(db, "SELECT status FROM orders WHERE intent_id = ANY(:ids)", ids=ids)
        return len(rows) == count and all(r["status"] in ("filled", "rejected", "failed", "cancelled") for r in rows)

    try:
        await asyncio.sleep(1.5)  # its first heartbeat: the router sees the broker up
        for intent_id, size in zip(ids, sizes, strict=True):
            await publish_json(
                nc, intent_payload(intent_id=intent_id, strategy_id="crashbot", quantity=str(size)), strategy="crashbot"
            )
        deadline = asyncio.get_running_loop().time() + 180
        while not await everything_final():
            assert asyncio.get_running_loop().time() < deadline, f"not all intents final; see {log}"
            if plan[min(runs, len(plan) - 1)] == "random" and executor.returncode is None:
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                if executor.returncode is None:
                    executor.send_signal(signal.SIGKILL)
            try:
                await asyncio.wait_for(executor.wait(), 0.5)
            except TimeoutError:
                continue
            runs += 1
            executor = await start_executor(servers, log, plan[min(runs, len(plan) - 1)], broker, adapter, module)
    finally:
        if executor.returncode is None:
            executor.send_signal(signal.SIGTERM)
            await executor.wait()

    assert runs >= len(plan) - 1, f"the executor crashed only {runs} times; see {log}"
    rows = await fetch_all(db, "SELECT * FROM orders WHERE intent_id = ANY(:ids)", ids=ids)
    assert sorted(r["intent_id"] for r in rows) == sorted(ids)  # no lost intent, one order row each
    assert {r["status"] for r in rows} == {"filled"}
    fills = await fetch_all(db, "SELECT * FROM trade_logs WHERE intent_id = ANY(:ids)", ids=ids)
    assert sorted(f["intent_id"] for f in fills) == sorted(ids)  # one fill each, none doubled
    log_text = log.read_text()
    for point in ("before_place", "after_place", "after_report"):
        assert f"failpoint {point} reached" in log_text
    return ids, sizes
