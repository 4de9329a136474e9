"""The Alpaca adapter in the running system: router, executor and aggregator on real NATS and
Postgres, the executor talking HTTP to the fake Alpaca on a loopback port (``base_url``), with
keys that come from the environment. Afterwards no key appears in any log line, message, KV
entry or database row, even after the keys were refused for a while."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy import text

from contracts import BrokerName, BrokerStatus, CancelRequest
from tests.builders import CRYPTO, intent_payload
from tests.conftest import eventually, fetch_all
from tests.fakes.alpaca import FakeAlpaca
from tests.fakes.serve import serve
from tests.fakes.stream import serve_stream
from workers.domain.config import parse_config
from workers.platform.bus import publish, read_stream
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration

KEY_ID = "PKMBXSCAN7Q2WE4R"
SECRET = "mbx-scan-secret-4d9a1f0c77b2"


async def test_orders_flow_through_alpaca_and_no_key_leaks(
    start_pipeline: Any, isolated: Settings, nc: NatsClient, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    fake = FakeAlpaca(key_id=KEY_ID, secret_key=SECRET, cash=Decimal(10**9))
    monkeypatch.setenv("ALPACA_API_KEY", KEY_ID)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    async with serve_stream(fake) as stream:
        await _run(start_pipeline, isolated, nc, capfd, fake, stream.url)


async def _run(start_pipeline: Any, isolated: Settings, nc: NatsClient, capfd: Any, fake: FakeAlpaca, ws: str) -> None:
    with serve(fake.handle) as (url, lock):
        config = parse_config(
            {
                "brokers": {
                    "alpaca": {
                        "adapter": "alpaca",
                        "base_url": url,
                        "stream_url": ws,
                        "credentials": {"api_key": "${ALPACA_API_KEY}", "secret_key": "${ALPACA_SECRET_KEY}"},
                    },
                    "coinbase": {},
                },
                "market_data": {"source": "alpaca", "base_url": url},
            }
        )
        await start_pipeline(config, own_settings=isolated)
        js = nc.jetstream()
        subjects = isolated.subjects
        market = [intent_payload(strategy_id="alpacabot", quantity=str(n)) for n in range(1, 9)]
        resting = [intent_payload(strategy_id="alpacabot", order_type="limit", limit_price="1.00") for _ in range(2)]
        crypto = intent_payload(strategy_id="alpacabot", **CRYPTO)  # smart default: coinbase (simulated)
        for payload in [*market, *resting, crypto]:
            await js.publish(
                subjects.intent("alpacabot"),
                json.dumps(payload).encode(),
                headers={"Nats-Msg-Id": payload["intent_id"]},
            )
        engine = make_engine(isolated.database_url or "", pool_size=1)
        try:

            async def statuses(ids: list[str]) -> dict[str, str]:
                rows = await fetch_all(engine, "SELECT intent_id, status FROM orders WHERE intent_id = ANY(:i)", i=ids)
                return {r["intent_id"]: r["status"] for r in rows}

            async def all_in(ids: list[str], status: str) -> bool:
                found = await statuses(ids)
                return len(found) == len(ids) and set(found.values()) == {status}

            await eventually(lambda: all_in([p["intent_id"] for p in market], "filled"), timeout=30)
            [decision] = await fetch_all(
                engine, "SELECT decision FROM multi_broker_routes WHERE intent_id = :i", i=market[0]["intent_id"]
            )
            assert decision["decision"]["quote"]["source"] == "alpaca"  # priced from Alpaca's market data
            await eventually(lambda: all_in([p["intent_id"] for p in resting], "accepted"), timeout=30)

            # The keys are refused for a while: the broker goes down with a reason an operator
            # can act on (its status, the router's exclusions), and errors reach the logs.
            with lock:
                fake.faults.auth_expired = True
            answer = await nc.request(subjects.snapshot_request(BrokerName.ALPACA), b"", timeout=10)
            assert "credentials were refused" in answer.data.decode()
            health = await js.key_value(subjects.status_bucket)

            async def alpaca_down() -> BrokerStatus | None:
                status = BrokerStatus.model_validate_json((await health.get("alpaca")).value or b"")
                return status if not status.connected else None

            down = await eventually(alpaca_down, timeout=10)
            assert "renew ALPACA_API_KEY / ALPACA_SECRET_KEY" in down.reason
            with lock:
                fake.faults.auth_expired = False
            answer = await nc.request(subjects.snapshot_request(BrokerName.ALPACA), b"", timeout=10)
            assert "error" not in json.loads(answer.data)

            # One resting order fills at the broker in two parts; the other is cancelled.
            with lock:
                orders = {o["client_order_id"]: o for o in fake.orders.values()}
                first = orders[resting[0]["intent_id"]]["id"]
                asked_before = len(fake.requests)
                fake.trade(first, Decimal(4))
                fake.trade(first)
            request = CancelRequest(intent_id=resting[1]["intent_id"], strategy_id="alpacabot")
            await publish(js, subjects.cancel("alpacabot"), request, intent_id=request.intent_id)
            await eventually(lambda: all_in([resting[0]["intent_id"]], "filled"), timeout=20)
            with lock:
                polled = [r for r in fake.requests[asked_before:] if r == ("GET", f"/v2/orders/{first}")]
            assert polled == []  # the fills came by the stream, not by polling the order
            await eventually(lambda: all_in([resting[1]["intent_id"]], "cancelled"), timeout=30)
            await eventually(lambda: all_in([crypto["intent_id"]], "filled"), timeout=30)

            # At Alpaca: one order per intent sent there, and the fills Postgres holds are its fills.
            with lock:
                at_alpaca = sorted(o["client_order_id"] for o in fake.orders.values())
                executions = len(fake.activities)
            assert at_alpaca == sorted(p["intent_id"] for p in [*market, *resting])
            fills = await fetch_all(
                engine,
                "SELECT broker_name, count(*) AS n, sum(quantity) AS qty FROM trade_logs "
                "WHERE broker_name = 'alpaca' GROUP BY broker_name",
            )
            assert fills[0]["n"] == executions == len(market) + 2
            assert Decimal(fills[0]["qty"]) == sum(Decimal(p["quantity"]) for p in market) + 10

            # No key anywhere: logs, every stored message, every KV entry, every row.
            seen = capfd.readouterr()
            texts = [seen.out, seen.err]
            assert "credentials were refused" in seen.out + seen.err  # the refusals were logged, and scanned
            for stream in ("ORDERS", "ROUTES", "EXECUTIONS", "POSITIONS", "DLQ"):
                texts += [
                    m.data.decode(errors="replace") for m in await read_stream(js, subjects.stream_name(stream), ">")
                ]
            names = [s.config.name for s in await js.streams_info()]
            for name in names:
                if name and name.startswith(f"KV_{isolated.subject_prefix}_"):
                    texts += [m.data.decode(errors="replace") for m in await read_stream(js, name, ">")]
            async with engine.connect() as conn:
                tables = (
                    await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
                ).scalars()
                for table in list(tables):
                    rows = (await conn.execute(text(f'SELECT * FROM "{table}"'))).all()
                    texts += [repr(tuple(row)) for row in rows]
            assert len(texts) > 100
            leaks = [t[:200] for t in texts if KEY_ID in t or SECRET in t]
            assert not leaks, f"a key leaked: {leaks[:3]}"
            assert any(BrokerName.ALPACA in t for t in texts)
        finally:
            await engine.dispose()
