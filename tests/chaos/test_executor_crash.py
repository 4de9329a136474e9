"""Crash test: the executor is killed at every point of its work, and restarted; every intent
still ends in a terminal state, and the broker's own book holds exactly one order per intent.

It runs each real adapter against its fake broker, the executor a process. Alpaca refuses a
repeated client order id (422), over real HTTP. Schwab has none and would take a blind retry as
a second order: every intent the same size, only looking before placing, the shape lock and the
attributions keep its book clean. IBKR's gateway lives in the test and is reached across
processes; a resent order id is refused (error 103). The three run at once, each on subjects
and a database of its own (they mostly wait: on the executor's 10 s ack wait after each crash).
The simulated brokers are killed the same way in the worker-kill chaos test
(tests/chaos/test_worker_kills.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from tests.builders import intent_payload, new_intent_id
from tests.conftest import fetch_all, new_database
from tests.fakes.alpaca import FakeAlpaca
from tests.fakes.ibkr import FakeGateway
from tests.fakes.ibkr_bridge import BRIDGE_ENV, serve_gateway
from tests.fakes.schwab import FakeSchwab
from tests.fakes.serve import serve
from tests.fakes.stream import serve_stream
from tests.servers import Servers
from workers.domain.config import parse_config
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings
from workers.venues.schwab.tokens import TokenStore

pytestmark = pytest.mark.integration

INTENTS = 200
SAME_SIZE_INTENTS = 120
"""Identical orders go one at a time (the shape lock): fewer, still past every failpoint."""
IBKR_EXECUTOR = "tests.chaos.ibkr_executor"
# Each executor run dies at one point: before sending, after sending but before reporting,
# after reporting but before the ack, then twice at a random moment (SIGKILL), then runs clean.
PLAN: list[str | None] = ["before_place:15", "after_place:25", "after_report:35", "random", "random", None]
SAME_SIZE_PLAN: list[str | None] = ["before_place:10", "after_place:20", "after_report:30", None]
"""Identical orders wait for a killed holder's redelivery (the 10 s ack wait) at every crash:
the three failpoints, without the random kills, keep that run at the length of the others."""
FAKE_KEYS = ("PKCRASHTEST0001", "crash-test-secret")


@dataclass
class Run:
    """One adapter's crash run: its own subjects, database, log and fake broker."""

    name: str
    broker: str
    settings: Settings
    root: Path
    adapter: str = ""
    module: str = "workers"
    same_size: bool = False
    env: dict[str, str] | None = None
    placed: list[str] = field(default_factory=list)
    """Broker order ids the fake holds for this run (Schwab: compared with Postgres)."""

    @property
    def log(self) -> Path:
        return self.root / "executor.log"


async def start_executor(servers: Servers, run: Run, failpoints: str | None) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MBX_")} | (run.env or {})
    env.update({"MBX_NATS_URL": servers.nats_url, "MBX_LOG_FORMAT": "json", "MBX_LOG_LEVEL": "INFO"})
    env["MBX_SUBJECT_PREFIX"] = run.settings.subject_prefix
    env.update({"ALPACA_API_KEY": FAKE_KEYS[0], "ALPACA_SECRET_KEY": FAKE_KEYS[1]})
    env.update({"SCHWAB_APP_KEY": FakeSchwab.app_key, "SCHWAB_APP_SECRET": FakeSchwab.app_secret})
    env["MBX_SCHWAB_TOKEN_FILE"] = str(run.root / "schwab-token.json")
    if run.broker == "schwab":
        env["MBX_LIVE"] = "1"  # Schwab has no paper environment (here: its fake)
    # A broker's documented rate limit (Schwab: 120 a minute) would make this test wait on the
    # rate budget for minutes; what it tests is crash safety, so the limit is raised.
    config = run.root / "executor.yaml"
    config.write_text(
        f"brokers:\n  {run.broker}:\n    rate_limit: {{requests: 100000, per_seconds: 1}}\n"
        + ("    orders_per_day: 1000000000\n" if run.broker == "schwab" else "")
        + "    paper_cash: 1000000000000000\n"
        + run.adapter
    )
    env["MBX_CONFIG_FILE"] = str(config)
    if failpoints and failpoints != "random":
        env["MBX_FAILPOINTS"] = failpoints
    with run.log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", run.module, "worker", "executor", "--broker", run.broker,
            env=env, stdout=out, stderr=out,
        )  # fmt: skip


@contextlib.asynccontextmanager
async def alpaca_run(run: Run) -> AsyncIterator[Callable[[list[str], list[int]], None]]:
    fake = FakeAlpaca(*FAKE_KEYS, cash=Decimal(10**15))
    async with serve_stream(fake) as stream:
        with serve(fake.handle) as (url, _lock):
            run.adapter = (
                f"    adapter: alpaca\n    base_url: {url}\n    stream_url: {stream.url}\n"
                '    credentials: {api_key: "${ALPACA_API_KEY}", secret_key: "${ALPACA_SECRET_KEY}"}\n'
            )

            def check(ids: list[str], sizes: list[int]) -> None:
                placed = sorted(o["client_order_id"] for o in fake.orders.values())
                assert placed == sorted(ids), f"{run.name}: not one order per intent at the broker"

            yield check


@contextlib.asynccontextmanager
async def schwab_run(run: Run) -> AsyncIterator[Callable[[list[str], list[int]], None]]:
    fake = FakeSchwab(cash=Decimal(10**15))
    TokenStore(run.root / "schwab-token.json").save_login(fake.issue_tokens())
    with serve(fake.handle) as (url, lock):
        run.adapter = (
            f"    adapter: schwab\n    base_url: {url}\n"
            '    credentials: {app_key: "${SCHWAB_APP_KEY}", app_secret: "${SCHWAB_APP_SECRET}"}\n'
        )

        def check(ids: list[str], sizes: list[int]) -> None:
            with lock:
                placed = [str(o["orderId"]) for o in fake.orders.values() if o["quantity"] == sizes[0]]
            assert len(placed) == len(ids), f"{run.name}: {len(placed)} orders at the broker for {len(ids)} intents"
            run.placed = placed

        yield check


@contextlib.asynccontextmanager
async def ibkr_run(run: Run) -> AsyncIterator[Callable[[list[str], list[int]], None]]:
    gateway = FakeGateway(cash=Decimal(10**15))
    async with serve_gateway(gateway) as address:
        run.adapter, run.module, run.env = "    adapter: ibkr\n", IBKR_EXECUTOR, {BRIDGE_ENV: address}

        def check(ids: list[str], sizes: list[int]) -> None:
            refs = sorted(o.order.orderRef for o in gateway.orders.values())  # a resent id is refused (103)
            assert refs == sorted(ids), f"{run.name}: not one order per intent at the gateway"

        yield check


RUNS: dict[str, tuple[str, Callable[[Run], Any]]] = {
    "alpaca-over-http": ("alpaca", alpaca_run),
    "schwab-over-http": ("schwab", schwab_run),
    "ibkr-over-bridge": ("ibkr", ibkr_run),
}


async def test_executors_killed_at_every_point_place_each_intent_exactly_once(
    start_pipeline: Callable[..., Awaitable[Any]], nc: NatsClient, servers: Servers, settings: Settings, tmp_path: Path
) -> None:
    runs = []
    for name, (broker, _) in RUNS.items():
        prefix = f"t{uuid.uuid4().hex[:10]}"
        own = settings.model_copy(
            update={"database_url": await new_database(servers, prefix), "subject_prefix": prefix}
        )
        (tmp_path / name).mkdir()
        runs.append(Run(name, broker, own, tmp_path / name, same_size=broker == "schwab"))

    async def one(run: Run) -> None:
        async with RUNS[run.name][1](run) as check:
            ids, sizes = await crash_repeatedly(start_pipeline, nc, servers, run)
            check(ids, sizes)
        if run.broker == "schwab":  # each intent's own order: none doubled, none shared
            db = make_engine(run.settings.database_url or "", pool_size=1)
            try:
                rows = await fetch_all(db, "SELECT broker_order_id FROM orders WHERE intent_id = ANY(:i)", i=ids)
            finally:
                await db.dispose()
            assert sorted(r["broker_order_id"] for r in rows) == sorted(run.placed)

    await asyncio.gather(*(one(run) for run in runs))


async def crash_repeatedly(
    start_pipeline: Callable[..., Awaitable[Any]], nc: NatsClient, servers: Servers, run: Run
) -> tuple[list[str], list[int]]:
    """Run the executor through its plan while its intents flow; the intents' ids and sizes
    (each its own, or for Schwab one size for all)."""
    plan = SAME_SIZE_PLAN if run.same_size else PLAN
    rng = random.Random(20261121)
    # The one broker's executor is killed and restarted throughout: a restart slower than the
    # default 5 s heartbeat timeout (a loaded machine) would make the broker down and the router
    # reject the intents meanwhile, where this test is about each being placed once.
    config = parse_config({"brokers": {run.broker: {}}, "routing": {"heartbeat_timeout_s": 60}})
    await start_pipeline(config, executors=False, own_settings=run.settings)
    runs = 0
    executor = await start_executor(servers, run, plan[0])
    count = SAME_SIZE_INTENTS if run.same_size else INTENTS
    ids = [new_intent_id("crash") for _ in range(count)]
    sizes = [100_000 + rng.randrange(100_000)] * count if run.same_size else rng.sample(range(1, 100_000), count)
    db = make_engine(run.settings.database_url or "", pool_size=1)

    async def everything_final() -> bool:
        rows = await fetch_all(db, "SELECT status FROM orders WHERE intent_id = ANY(:ids)", ids=ids)
        return len(rows) == count and all(r["status"] in ("filled", "rejected", "failed", "cancelled") for r in rows)

    try:
        await asyncio.sleep(1.5)  # its first heartbeat: the router sees the broker up
        for intent_id, size in zip(ids, sizes, strict=True):
            payload = intent_payload(intent_id=intent_id, strategy_id="crashbot", quantity=str(size))
            await nc.jetstream().publish(
                run.settings.subjects.intent("crashbot"),
                json.dumps(payload).encode(),
                headers={"Nats-Msg-Id": intent_id},
            )
        deadline = asyncio.get_running_loop().time() + 180
        while not await everything_final():
            assert asyncio.get_running_loop().time() < deadline, f"{run.name}: not all intents final; see {run.log}"
            if plan[min(runs, len(plan) - 1)] == "random" and executor.returncode is None:
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                if executor.returncode is None:
                    executor.send_signal(signal.SIGKILL)
            try:
                await asyncio.wait_for(executor.wait(), 0.5)
            except TimeoutError:
                continue
            runs += 1
            executor = await start_executor(servers, run, plan[min(runs, len(plan) - 1)])
        rows = await fetch_all(db, "SELECT * FROM orders WHERE intent_id = ANY(:ids)", ids=ids)
        fills = await fetch_all(db, "SELECT * FROM trade_logs WHERE intent_id = ANY(:ids)", ids=ids)
    finally:
        if executor.returncode is None:
            executor.send_signal(signal.SIGTERM)
            await executor.wait()
        await db.dispose()

    assert runs >= len(plan) - 1, f"{run.name}: the executor crashed only {runs} times; see {run.log}"
    assert sorted(r["intent_id"] for r in rows) == sorted(ids)  # no lost intent, one order row each
    assert {r["status"] for r in rows} == {"filled"}
    assert sorted(f["intent_id"] for f in fills) == sorted(ids)  # one fill each, none doubled
    log_text = run.log.read_text()
    for point in ("before_place", "after_place", "after_report"):
        assert f"failpoint {point} reached" in log_text, f"{run.name}: {point} never reached"
    return ids, sizes
