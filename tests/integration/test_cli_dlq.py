"""`mbx dlq`: a dead-letter scenario end to end through the real CLI."""

from __future__ import annotations

import json
from typing import Any

import nats
import pytest

from contracts import BrokerName
from tests.builders import intent_payload
from tests.conftest import TEST_CASH, Pipeline, eventually, fetch_all
from tests.integration.test_cli import mbx
from workers.domain.config import parse_config
from workers.entry import build_executor_worker
from workers.platform.bus import read_stream
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings
from workers.venues.simulated.venue import SimulatedVenue

pytestmark = pytest.mark.integration


class MisconfiguredVenue(SimulatedVenue):
    """An adapter started without its credentials: every request fails, for a reason no retry fixes."""

    async def place_order(self, intent: Any, client_order_id: str) -> Any:
        raise RuntimeError("alpaca: API key not configured (set ALPACA_API_KEY)")


async def test_dead_letters_are_listed_then_replayed_exactly_once(start_pipeline: Any, isolated: Settings) -> None:
    config = parse_config({"brokers": {"alpaca": {}}})
    broken = MisconfiguredVenue(BrokerName.ALPACA, rate_limit=(1_000_000, 1.0))
    pipeline: Pipeline = await start_pipeline(
        config, venue_overrides={BrokerName.ALPACA: broken}, own_settings=isolated
    )
    prefix = isolated.subject_prefix
    env = {
        "MBX_NATS_URL": isolated.nats_url or "",
        "MBX_DATABASE_URL": isolated.database_url or "",
        "MBX_SUBJECT_PREFIX": prefix,
    }
    nc = await nats.connect(isolated.nats_url or "")
    db = make_engine(isolated.database_url or "", pool_size=2)
    try:
        js = nc.jetstream()
        await js.publish(f"{prefix}.orders.intent.dlq", b"{not json", headers={"Nats-Msg-Id": "garbage-1"})
        payloads = [intent_payload(strategy_id="dlq") for _ in range(3)]
        ids = [p["intent_id"] for p in payloads]
        for payload in payloads:
            await js.publish(
                f"{prefix}.orders.intent.dlq",
                json.dumps(payload).encode(),
                headers={"Nats-Msg-Id": payload["intent_id"]},
            )

        async def all_dead() -> bool:
            # Read straight from the stream while waiting: a CLI process a second would load
            # the machine it waits on; the CLI is asked once they are all there.
            stored = await read_stream(js, isolated.subjects.stream_name("DLQ"), isolated.subjects.dlq("*"))
            return len(stored) == 4

        await eventually(all_dead, timeout=40, interval=0.5)
        code, out = await mbx("dlq", "list", env=env)
        assert code == 0, out
        assert "4 dead letters" in out
        assert "invalid OrderIntent" in out  # the malformed one, at the router
        assert "gave up after 5 deliveries" in out and "API key not configured" in out
        code, out = await mbx("dlq", "list", "--stage", "executor", "--error", "api key", "--json", env=env)
        executor_letters = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert sorted(letter["correlation_id"] for letter in executor_letters) == sorted(ids)
        code, out = await mbx("dlq", "show", str(executor_letters[0]["seq"]), env=env)
        assert code == 0 and "Mbx-Intent-Id" in out and executor_letters[0]["correlation_id"] in out

        # The configuration is fixed: the executor restarts with working credentials.
        [old] = [w for w in pipeline.workers if w.name == "executor-alpaca"]
        await old.stop()
        pipeline.workers.remove(old)
        fixed = SimulatedVenue(BrokerName.ALPACA, rate_limit=(1_000_000, 1.0), cash=TEST_CASH)
        executor = build_executor_worker(isolated, BrokerName.ALPACA, fixed, pipeline.config)
        await executor.start()
        pipeline.workers.append(executor)

        code, out = await mbx("dlq", "replay", env=env)
        assert code == 2 and "--all" in out  # no filter: refused
        code, out = await mbx("dlq", "replay", "--stage", "executor", "--dry-run", env=env)
        assert code == 0 and "dry run: 3 dead letters would be replayed" in out
        code, out = await mbx("dlq", "replay", "--stage", "executor", env=env)
        assert code == 0 and "replayed 3 of 3" in out, out

        async def filled() -> bool:
            rows = await fetch_all(db, "SELECT status FROM orders WHERE intent_id = ANY(:ids)", ids=ids)
            return len(rows) == 3 and {r["status"] for r in rows} == {"filled"}

        await eventually(filled, timeout=20)
        code, out = await mbx("dlq", "replay", "--stage", "executor", env=env)
        assert code == 0 and "replayed 3 of 3" in out
        # The replay published and was acknowledged before the command returned: once the
        # executor has nothing pending or unacked, it has worked the second replay.
        await eventually(lambda: _all_handled(executor), timeout=20)
        book = [o.client_order_id for o in await fixed.book.all()]
        assert sorted(book) == sorted(ids)
        fills = await fetch_all(db, "SELECT intent_id FROM trade_logs WHERE intent_id = ANY(:ids)", ids=ids)
        assert sorted(f["intent_id"] for f in fills) == sorted(ids)
        replays = await fetch_all(db, "SELECT * FROM dlq_replays ORDER BY id")
        assert len(replays) == 6 and {r["intent_id"] for r in replays} == set(ids)
        assert len({r["new_message_id"] for r in replays}) == 6

        code, out = await mbx("dlq", "purge", "--stage", "router", "--yes", env=env)
        assert code == 0 and "deleted 1 dead letters" in out
        code, out = await mbx("dlq", "list", "--json", env=env)
        assert all(json.loads(line)["stage"] == "executor" for line in out.splitlines() if line.startswith("{"))
    finally:
        await nc.close()
        await db.dispose()


async def _all_handled(executor: Any) -> bool:
    spec = executor.handlers.spec
    info = await executor.js.consumer_info(spec.stream, spec.durable)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)
