"""Aggregator throughput: messages persisted per second, beside a raw batched-insert baseline.

One run on embedded servers (its own NATS and PostgreSQL in a temporary directory):
1. the streams are filled with the messages of N intents (a route, an accepted report, a fill
   and a filled report each: 4 N messages) under a prefix of their own;
2. the aggregator worker is started and timed until its consumers have nothing pending or
   unacknowledged: every message decoded, deduplicated through the inbox and written;
3. the baseline: the same number of rows inserted into a plain table with psycopg, in
   transactions of the aggregator's batch size (the cheapest way to write the rows at all).

Run with `make bench`; results go to bench/results/aggregator.json.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import nats
import psycopg

from bench.report import publish, sizes
from contracts import BrokerName, OrderStatus
from tests.builders import make_intent, make_route
from workers.aggregator.app import build_aggregator
from workers.devstack.nats import EmbeddedNats
from workers.devstack.postgres import EmbeddedPostgres
from workers.domain.reports import fill_message, report
from workers.domain.venue import VenueFill, VenueOrder
from workers.platform.bus import ensure_streams, headers_for
from workers.platform.db.engine import make_engine
from workers.platform.db.migrate import upgrade
from workers.platform.logs import configure_logging
from workers.platform.settings import Settings

BATCH = 500


def messages_for(n: int, prefix: str) -> list[tuple[str, bytes, dict[str, str]]]:
    out = []
    for k in range(n):
        intent = make_intent(intent_id=f"bench-{k}", quantity=str(1 + k % 50))
        route = make_route(intent, BrokerName.ALPACA)
        order = VenueOrder(f"alpaca-b{k}", intent.intent_id, OrderStatus.FILLED, intent.quantity or Decimal(1))
        fill = VenueFill(f"alpaca-b{k}-1", order.quantity, Decimal("100.5"), Decimal(0), route.created_at)
        order.fills, order.filled_quantity, order.average_price = [fill], order.quantity, fill.price
        for subject, message in (
            (f"{prefix}.routes.alpaca", route),
            (f"{prefix}.exec.alpaca.accepted", report(route, OrderStatus.ACCEPTED, 1, order, final=False)),
            (f"{prefix}.fills.alpaca.AAPL", fill_message(route, order, fill)),
            (f"{prefix}.exec.alpaca.filled", report(route, OrderStatus.FILLED, 2, order)),
        ):
            out.append((subject, message.model_dump_json().encode(), headers_for(message, intent.intent_id)))
    return out


async def fill_streams(nats_url: str, settings: Settings, messages: list[tuple[str, bytes, dict[str, str]]]) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, settings.subjects)
    for start in range(0, len(messages), 500):
        chunk = messages[start : start + 500]
        await asyncio.gather(*(js.publish(s, d, headers=h) for s, d, h in chunk))
    await nc.close()


async def drain(nats_url: str, settings: Settings, progress: Callable[[str], None]) -> float:
    """Seconds the aggregator takes to persist everything waiting in its streams, from the
    moment it has started (its connection and consumers set up) to the last ack."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    worker = build_aggregator(settings, make_engine(settings.sqlalchemy_url(), pool_size=4), batch_size=BATCH)
    specs = [s for s in settings.topology.aggregator_consumers() if "POSITIONS" not in s.stream]
    await worker.start()  # connects and binds its consumers; the pull loops start right after
    started = reported = time.perf_counter()
    try:
        while True:
            pending = 0
            for spec in specs:
                info = await js.consumer_info(spec.stream, spec.durable)
                pending += (info.num_pending or 0) + (info.num_ack_pending or 0)
            if pending == 0:
                break
            if time.perf_counter() - reported > 1:
                progress(f"  aggregator: {pending} messages still to persist")
                reported = time.perf_counter()
            await asyncio.sleep(0.05)
        return time.perf_counter() - started
    finally:
        await worker.stop()
        await nc.close()


def verify(dsn: str, intents: int) -> None:
    """Every message persisted, none dead-lettered: a figure for messages lost is no figure."""
    with psycopg.connect(dsn) as conn:
        counts = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            for table in ("multi_broker_routes", "trade_logs", "inbox")
        }
        filled = conn.execute("SELECT count(*) FROM orders WHERE status = 'filled'").fetchone()[0]  # type: ignore[index]
    expected = {"multi_broker_routes": intents, "trade_logs": intents, "inbox": 4 * intents}
    if counts != expected or filled != intents:
        raise RuntimeError(f"the aggregator did not persist everything: {counts}, {filled} filled orders")


def raw_insert(dsn: str, rows: int) -> float:
    """Seconds to insert ``rows`` rows of similar width with psycopg, BATCH per transaction."""
    with psycopg.connect(dsn, autocommit=False) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, message_id text UNIQUE, "
            "intent_id text, broker_name text, symbol text, quantity numeric, price numeric, at timestamptz)"
        )
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cur:
            for start in range(0, rows, BATCH):
                cur.executemany(
                    "INSERT INTO bench_raw (message_id, intent_id, broker_name, symbol, quantity, price, at) "
                    "VALUES (%s, %s, 'alpaca', 'AAPL', %s, 100.5, now())",
                    [(f"raw-{k}", f"bench-{k // 4}", k % 50 + 1) for k in range(start, min(start + BATCH, rows))],
                )
                conn.commit()
        return time.perf_counter() - started


def run(intents: int = 5000, progress: Callable[[str], None] = print) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mbx-bench-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        postgres = EmbeddedPostgres(Path(tmp) / "postgres")
        server.start()
        postgres.start()
        try:
            upgrade(postgres.url())
            settings = Settings(
                nats_url=server.url, database_url=postgres.url(), subject_prefix="bench", config_file=None
            )
            messages = messages_for(intents, "bench")
            progress(f"publishing {len(messages)} messages ({intents} intents)")
            asyncio.run(fill_streams(server.url, settings, messages))
            progress("persisting them with the aggregator")
            seconds = asyncio.run(drain(server.url, settings, progress))
            verify(postgres.url(), intents)
            progress("baseline: raw batched inserts")
            raw_seconds = raw_insert(postgres.url(), len(messages))
        finally:
            postgres.stop()
            server.stop()
    persisted = len(messages) / seconds
    raw = len(messages) / raw_seconds
    return {
        "messages": len(messages),
        "aggregator_messages_persisted_per_s": round(persisted),
        "baseline_raw_batched_insert_rows_per_s": round(raw),
        "ratio_aggregator_to_raw": round(persisted / raw, 3),
        "target_messages_per_s": 10_000,
    }


def main() -> None:
    configure_logging("WARNING", "console")  # one line per batch would cost more than it tells
    [intents] = sizes("bench.aggregator_bench", __doc__, ("intents", 5000, "intents whose messages are persisted"))
    results = run(intents)
    publish("aggregator throughput (embedded NATS and PostgreSQL, this machine)", "aggregator", results)


if __name__ == "__main__":
    main()
