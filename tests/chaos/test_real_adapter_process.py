"""`mbx up` as separate processes with the real Alpaca and Coinbase adapters, talking HTTP (and
Alpaca's websocket) to the fake brokers on loopback ports (`base_url`, `stream_url`): 200 mixed
intents end filled exactly once, resting orders' fills at Alpaca arrive by the stream, every
order and fill is in Postgres, and no log holds a key. Coinbase has no paper environment, so
the stack runs with the real-money opt-in (`MBX_LIVE=1`)."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.builders import CRYPTO, intent_payload
from tests.chaos.test_stack_process import mbx_up
from tests.conftest import fetch_all
from tests.fakes.alpaca import FakeAlpaca
from tests.fakes.coinbase import FakeCoinbase
from tests.fakes.serve import serve
from tests.fakes.stream import serve_stream, serve_user_stream
from workers.platform.db.engine import make_engine

pytestmark = pytest.mark.integration

KEY_ID, SECRET = "PKPROCESSTEST01", "process-test-secret-7c1e"


def mixed(n: int) -> list[dict[str, Any]]:
    kinds: list[dict[str, Any]] = [
        {"symbol": "AAPL"},
        {"symbol": "MSFT", "quantity": "3"},
        {"symbol": "NVDA", "side": "sell", "quantity": "2", "position_effect": "open"},  # a short sale
        {"quantity": None, "notional": "500", "broker": "alpaca"},
        CRYPTO,  # the smart default: coinbase, simulated
        {"symbol": "KO", "order_type": "limit", "limit_price": "1.00", "quantity": "6"},  # rests at alpaca
        {"symbol": "ETH-USD", "asset_class": "crypto", "time_in_force": "gtc", "quantity": "0.5", "broker": "alpaca"},
    ]
    return [intent_payload(strategy_id="procbot", **kinds[i % len(kinds)]) for i in range(n)]


async def test_mbx_up_with_the_alpaca_and_coinbase_adapters_fills_everything_once(
    tmp_path: Path, servers: Any, isolated: Any
) -> None:
    fake = FakeAlpaca(key_id=KEY_ID, secret_key=SECRET, cash=Decimal(10**9))
    coinbase = FakeCoinbase()
    async with serve_stream(fake) as stream, serve_user_stream(coinbase) as user_stream:
        with serve(fake.handle) as (url, lock), serve(coinbase.handle) as (coinbase_url, coinbase_lock):
            config = tmp_path / "brokers.yaml"
            config.write_text(
                "brokers:\n"
                "  alpaca:\n"
                f"    adapter: alpaca\n    base_url: {url}\n    stream_url: {stream.url}\n"
                '    credentials: {api_key: "${ALPACA_API_KEY}", secret_key: "${ALPACA_SECRET_KEY}"}\n'
                "    rate_limit: {requests: 100000, per_seconds: 1}\n"
                "    account_type: margin\n"
                "  coinbase:\n"
                f"    adapter: coinbase\n    base_url: {coinbase_url}\n    stream_url: {user_stream.url}\n"
                '    credentials: {api_key: "${COINBASE_API_KEY}", api_secret: "${COINBASE_API_SECRET}"}\n'
                "    rate_limit: {requests: 100000, per_seconds: 1}\n"
            )
            env_vars = {
                "MBX_NATS_URL": servers.nats_url,
                "MBX_DATABASE_URL": isolated.database_url,
                "MBX_SUBJECT_PREFIX": isolated.subject_prefix,
                "MBX_CONFIG_FILE": str(config),
                "MBX_LIVE": "1",
                "ALPACA_API_KEY": KEY_ID,
                "ALPACA_SECRET_KEY": SECRET,
                "COINBASE_API_KEY": coinbase.key_name,
                "COINBASE_API_SECRET": coinbase.private_key,
            }
            with mbx_up(tmp_path, **env_vars) as (up, stack, _env):
                assert len(dict(stack["workers"])) == 5  # router, two executors, aggregator, parents
                intents = mixed(200)
                nc = await nats.connect(servers.nats_url)
                db = make_engine(isolated.database_url, pool_size=1)
                try:
                    await asyncio.sleep(2.0)  # the executors' first heartbeats
                    js = nc.jetstream()
                    for payload in intents:
                        await js.publish(
                            isolated.subjects.intent("procbot"),
                            json.dumps(payload).encode(),
                            headers={"Nats-Msg-Id": payload["intent_id"]},
                        )
                    ids = [p["intent_id"] for p in intents]
                    resting = [p["intent_id"] for p in intents if p.get("order_type") == "limit"]

                    async def statuses() -> dict[str, str]:
                        rows = await fetch_all(
                            db, "SELECT intent_id, status FROM orders WHERE intent_id = ANY(:i)", i=ids
                        )
                        return {r["intent_id"]: r["status"] for r in rows}

                    deadline = time.monotonic() + 90
                    while sum(1 for i, s in (await statuses()).items() if s in ("filled", "accepted")) < len(ids):
                        assert time.monotonic() < deadline, f"not all placed: {await statuses()}"
                        await asyncio.sleep(0.5)

                    # The market reaches the resting orders at Alpaca: in two parts each.
                    with lock:
                        asked_before = len(fake.requests)
                        working = [o["id"] for o in fake.orders.values() if o["client_order_id"] in resting]
                        for order_id in working:
                            fake.trade(order_id, Decimal(2))
                            fake.trade(order_id)
                    deadline = time.monotonic() + 60
                    while set((await statuses()).values()) != {"filled"}:
                        assert time.monotonic() < deadline, "resting orders not reported filled"
                        await asyncio.sleep(0.5)
                    with lock:
                        polled = [
                            r for r in fake.requests[asked_before:] if r[1] in {f"/v2/orders/{w}" for w in working}
                        ]
                        at_alpaca = sorted(o["client_order_id"] for o in fake.orders.values())
                        executions = len(fake.activities)
                    with coinbase_lock:
                        at_coinbase = sorted(o["client_order_id"] for o in coinbase.orders.values())
                        coinbase_fills = len(coinbase.fills)
                    assert polled == []  # their fills came by the stream

                    rows = await fetch_all(
                        db,
                        "SELECT o.intent_id, o.broker_name, o.filled_quantity, "
                        "count(*) OVER (PARTITION BY o.intent_id) AS n FROM orders o WHERE o.intent_id = ANY(:i)",
                        i=ids,
                    )
                    assert len(rows) == len(ids) and {r["n"] for r in rows} == {1}
                    alpaca_ids = sorted(r["intent_id"] for r in rows if r["broker_name"] == "alpaca")
                    assert at_alpaca == alpaca_ids  # exactly one order at Alpaca per intent sent there
                    assert at_coinbase == sorted(r["intent_id"] for r in rows if r["broker_name"] == "coinbase")
                    assert {r["broker_name"] for r in rows} == {"alpaca", "coinbase"}
                    fills = await fetch_all(
                        db,
                        "SELECT broker_name, count(*) AS n FROM trade_logs WHERE intent_id = ANY(:i) GROUP BY 1",
                        i=ids,
                    )
                    assert {r["broker_name"]: r["n"] for r in fills} == {
                        "alpaca": executions,
                        "coinbase": coinbase_fills,
                    }
                finally:
                    await nc.close()
                    await db.dispose()
                up.terminate()
                assert up.wait(30) == 0
    logs, leaked = logs_holding(tmp_path, KEY_ID, SECRET, coinbase.private_key.splitlines()[1])
    assert any("executor-alpaca" in name for name in logs), logs
    assert leaked == []  # no worker's log holds a key


def logs_holding(root: Path, *secrets: str) -> tuple[list[str], list[str]]:
    """Every log file under ``root``, and those that contain any of ``secrets``."""
    logs = [f for f in root.rglob("*.log") if f.is_file()]
    return [f.name for f in logs], [f.name for f in logs if any(s in f.read_text(errors="replace") for s in secrets)]
