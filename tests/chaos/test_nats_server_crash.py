"""Chaos: the nats-server itself is SIGKILLed twice while 500 mixed intents flow, and restarted.

A killed server comes back with its most recent consumer acks lost (they are flushed lazily), so
some messages are delivered again as if for the first time, and every broker's heartbeat looks
stale for a while. The workers run in this process and stay up; the simulated brokers keep their
books in memory, as a real broker keeps its own whatever happens to our NATS. Afterwards every
intent has exactly one final report, at most one order at its broker, one ``orders`` row, fills
equal to its filled quantity, and nothing was rejected because of the restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import pytest

from contracts import BrokerName
from contracts.client import publish_retrying
from tests.builders import CRYPTO, FRACTIONAL, OPTION, intent_payload
from tests.conftest import Pipeline, fetch_all, new_database
from tests.servers import Servers
from workers.devstack.nats import EmbeddedNats
from workers.domain.config import parse_config
from workers.executor.app import build_executor, rate_limit
from workers.platform.bus import read_stream
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings
from workers.venues.simulated.venue import SimulatedVenue

pytestmark = pytest.mark.integration

INTENTS = 500
RATE = 50.0
KILL_AT = (150, 350)
DOWN_FOR = 6.0
"""Seconds the server stays down: longer than the heartbeat timeout (5 s), as in the report."""


def mixed_book() -> list[dict[str, Any]]:
    """Equities at alpaca, crypto at coinbase, options at schwab (identical sizes: schwab has no
    client order ids), fractional shares at robinhood, equities asked for at ibkr, and short sales."""
    kinds: list[dict[str, Any]] = [
        {"symbol": "AAPL"},
        {"symbol": "MSFT", "quantity": "3"},
        CRYPTO,
        OPTION | {"quantity": "1"},
        FRACTIONAL,
        {"symbol": "IBM", "broker": "ibkr"},
        {"symbol": "AAPL", "side": "sell", "position_effect": "open"},  # a short sale, at a margin account
        OPTION | {"quantity": "1"},
        {"symbol": "ETH-USD", "asset_class": "crypto", "time_in_force": None, "quantity": "0.2"},
        {"symbol": "NVDA"},
    ]
    run = uuid.uuid4().hex[:6]
    return [intent_payload(intent_id=f"nk{run}-{i:04d}", **kinds[i % len(kinds)]) for i in range(INTENTS)]


@pytest.fixture(params=["default", "sync_always"])
async def crashable_nats(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A nats-server of this test's own (single node) that it may kill, in each durability
    profile: JetStream's default lazy fsync, and ``sync_interval: always``."""
    server = EmbeddedNats(tmp_path / "nats", sync_always=request.param == "sync_always")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def own_database(servers: Servers) -> str:
    return await new_database(servers, f"nk{uuid.uuid4().hex[:10]}")


def kill(server: EmbeddedNats) -> None:
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(10)


async def publish_until_acked(js: Any, payload: dict[str, Any]) -> None:
    """A strategy's publish through the client library's retry: the same Nats-Msg-Id again
    while the server is away, stored once."""
    await publish_retrying(
        js,
        f"mbx.orders.intent.{payload['strategy_id']}",
        json.dumps(payload).encode(),
        {"Nats-Msg-Id": payload["intent_id"]},
        timeout=2.0,
    )


async def test_two_nats_server_crashes_lose_double_and_reject_nothing(
    crashable_nats: EmbeddedNats, own_database: str
) -> None:
    """Every intent fills, with exactly one final report and one order, through two server kills."""
    settings = Settings(nats_url=crashable_nats.url, database_url=own_database)
    # Margin accounts: the book's sells open shorts (a cash account refuses them).
    config = parse_config(
        {"brokers": {str(b): {"account_type": "margin"} for b in BrokerName}, "routing": {"heartbeat_timeout_s": 5}}
    )
    pipeline = Pipeline(settings, config, executors=False)
    venues = {
        b: SimulatedVenue(b, rate_limit=(100_000, 1.0), cash=Decimal(10**12), account_type="margin") for b in BrokerName
    }
    for broker, venue in venues.items():
        pipeline.workers.insert(1, build_executor(settings, broker, venue, rate_limit(broker, pipeline.config)))
    await pipeline.start()
    nc = await nats.connect(crashable_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    engine = make_engine(own_database, pool_size=2)
    book = mixed_book()
    try:
        js = nc.jetstream()
        started = time.monotonic()
        for i, payload in enumerate(book):
            if i in KILL_AT:
                kill(crashable_nats)
                await asyncio.sleep(DOWN_FOR)
                crashable_nats.start()
            await publish_until_acked(js, payload)
            await asyncio.sleep(max(0.0, started + (i + 1) / RATE - time.monotonic()))

        ids = [p["intent_id"] for p in book]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = await fetch_all(
                engine,
                "SELECT intent_id FROM orders WHERE intent_id = ANY(:ids) "
                "AND status IN ('filled', 'rejected', 'cancelled', 'failed', 'expired')",
                ids=ids,
            )
            if len({r["intent_id"] for r in rows}) == len(ids):
                break
            await asyncio.sleep(1.0)
        await asyncio.sleep(3.0)  # let any late duplicate surface before counting

        # At the brokers: never more than one order per intent (Schwab included).
        placed: Counter[str] = Counter()
        for venue in venues.values():
            for order in await venue.book.all():
                placed[venue.placed_for(order.broker_order_id)] += 1
        doubled = {i: n for i, n in placed.items() if n > 1}
        assert not doubled, f"placed more than once: {doubled}"

        # On the bus: exactly one final report per intent, every one of them a fill.
        finals: dict[str, list[str]] = defaultdict(list)
        reasons: dict[str, str] = {}
        for stored in await read_stream(nc.jetstream(), "EXECUTIONS", "mbx.exec.>"):
            report = json.loads(stored.data)
            if report.get("final"):
                finals[report["intent_id"]].append(report["status"])
                if report["status"] != "filled":
                    reasons[report["intent_id"]] = f"{report.get('reason_code')}: {report.get('reason', '')[:400]}"
        missing = [i for i in ids if i not in finals]
        twice = {i: s for i, s in finals.items() if len(s) > 1}
        not_filled = {i: s for i, s in finals.items() if s != ["filled"]}
        assert not missing, f"{len(missing)} intents have no final report, e.g. {missing[:5]}"
        assert not twice, f"{len(twice)} intents have several final reports, e.g. {list(twice.items())[:5]}"
        assert not not_filled, f"{len(not_filled)} intents did not fill, e.g. " + "; ".join(
            f"{i} {s}: {reasons.get(i, '')}" for i, s in list(not_filled.items())[:5]
        )

        # In Postgres: one order row per intent, filled, with fills adding up to it.
        orders = await fetch_all(
            engine,
            "SELECT o.intent_id, o.status, o.filled_quantity, count(*) OVER (PARTITION BY o.intent_id) AS n, "
            "(SELECT coalesce(sum(t.quantity), 0) FROM trade_logs t WHERE t.intent_id = o.intent_id) AS filled "
            "FROM orders o WHERE o.intent_id = ANY(:ids)",
            ids=ids,
        )
        assert len(orders) == len(ids), f"{len(orders)} order rows for {len(ids)} intents"
        assert {r["status"] for r in orders} == {"filled"}
        off = [dict(r) for r in orders if r["n"] != 1 or Decimal(r["filled"]) != Decimal(r["filled_quantity"])]
        assert not off, f"{len(off)} order rows disagree with their fills, e.g. {off[:3]}"
        assert sum(placed.values()) == len(ids)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
        await engine.dispose()
        await pipeline.stop()
