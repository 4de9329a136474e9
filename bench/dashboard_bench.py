"""The dashboard's queries with a million rows in the audit trail: each tab's database work per
page run, against a one-row round trip measured in the same run.

One run on an embedded PostgreSQL of its own: 1,000,000 route decisions, orders and fills over
30 days (5 brokers, 200 symbols, 20 strategies), 10,000 failovers, 1,000 config changes and
replays, 1,000 positions; then every query a tab makes, each timed as the median of 20 runs
after 3 warm-ups. The target is at most 100 ms per tab. The broker-status tab reads NATS only
(heartbeats in KV, consumer info), so it has no database figure. The portfolio's first read
after an aggregator starts applies every fill once (its running totals); it is reported apart,
as it is paid once per aggregator start, not per page.

Run with `make bench` (or `python -m bench.dashboard_bench [rows]`); results go to
bench/results/dashboard.json.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.report import publish, sizes
from workers.devstack.postgres import EmbeddedPostgres
from workers.platform.db.engine import make_engine
from workers.platform.db.migrate import upgrade
from workers.platform.settings import to_sqlalchemy_url
from workers.readmodel import routing
from workers.readmodel.explain import intent_story
from workers.readmodel.portfolio import PortfolioReader

BROKERS = ["alpaca", "coinbase", "schwab", "robinhood", "ibkr"]
RUNS, WARMUPS = 20, 3
TARGET_MS = 100.0

CANDIDATE = (
    "jsonb_build_object('broker', b, 'total', 0.85, 'cost_score', 1.0, 'speed_score', 0.9, 'fill_score', 0.6,"
    " 'estimated_fee', '0.01', 'expected_latency_ms', 20)"
)
GENERATE = [
    (
        "route decisions",
        f"""
        INSERT INTO multi_broker_routes (intent_id, strategy_id, broker_name, attempt, rule, score, estimated_fee,
                                         fallback_chain, decision, decided_at)
        SELECT 'b-' || g, 'strat-' || (g %% 20), (%(brokers)s::text[])[1 + g %% 5], 1,
               (ARRAY['default:equity', 'default:crypto', 'default:option', 'default:fractional', 'score'])[1 + g %% 5],
               0.85, 0.01, '["schwab", "ibkr"]'::jsonb,
               jsonb_build_object(
                 'reason', 'equity orders go to alpaca by default', 'reference_price', '100.00',
                 'config_version', 3, 'message_id', 'route-b-' || g || '-1',
                 'candidates', (SELECT jsonb_agg({CANDIDATE}) FROM unnest(ARRAY['alpaca', 'schwab', 'ibkr']) b),
                 'excluded', jsonb_build_array(jsonb_build_object('broker', 'coinbase',
                             'reason_code', 'unsupported_asset', 'reason', 'coinbase does not trade equity'))),
               now() - (g * interval '30 days' / %(n)s)
          FROM generate_series(1, %(n)s) g
        """,
    ),
    (
        "orders",
        """
        INSERT INTO orders (intent_id, strategy_id, broker_name, client_order_id, broker_order_id, attempt, symbol,
                            asset_class, side, order_type, quantity, filled_quantity, average_price, fees, status,
                            report_seq, created_at, updated_at, decided_at, reference_price, first_fill_at)
        SELECT r.intent_id, r.strategy_id, r.broker_name, r.intent_id, 'bo-' || r.id, 1, 'S' || (r.id %% 200),
               'equity', CASE WHEN r.id %% 3 = 0 THEN 'sell' ELSE 'buy' END, 'market', 10,
               CASE WHEN r.id %% 50 = 0 THEN 0 ELSE 10 END, 100 + (r.id %% 7) * 0.01, 0.01,
               CASE WHEN r.id %% 50 = 0 THEN 'rejected' ELSE 'filled' END, 2, r.decided_at, r.decided_at,
               r.decided_at, 100.00,
               CASE WHEN r.id %% 50 = 0 THEN NULL ELSE r.decided_at + interval '20 milliseconds' END
          FROM multi_broker_routes r WHERE r.intent_id LIKE 'b-%%'
        """,
    ),
    (
        "fills",
        """
        INSERT INTO trade_logs (fill_id, intent_id, strategy_id, broker_name, broker_order_id, symbol, side,
                                quantity, price, fee, executed_at)
        SELECT 'f-' || o.id, o.intent_id, o.strategy_id, o.broker_name, o.broker_order_id, o.symbol, o.side,
               10, o.average_price, 0.01, o.created_at + interval '20 milliseconds'
          FROM orders o WHERE o.status = 'filled' ORDER BY o.created_at
        """,
    ),
    (
        "failovers, config changes, replays, positions, accounts",
        """
        INSERT INTO failover_events (intent_id, strategy_id, failed_broker, attempt, reason_code, reason, occurred_at)
        SELECT 'b-' || (g * 100), 'strat-1', 'schwab', 1, 'unavailable', 'schwab is unreachable',
               now() - (g * interval '30 days' / 10000)
          FROM generate_series(1, 10000) g;
        INSERT INTO config_changes (revision, changed_by, summary, config)
        SELECT g, 'operator', 'routing.weights.cost=0.4', '{}'::jsonb FROM generate_series(1, 1000) g;
        INSERT INTO dlq_replays (letter_id, stage, original_subject, new_message_id, intent_id, error, replayed_by)
        SELECT 'l-' || g, 'executor', 'mbx.routes.schwab', 'replay-' || g, 'b-' || g, 'gave up', 'operator'
          FROM generate_series(1, 1000) g;
        INSERT INTO positions (broker_name, symbol, asset_class, quantity, average_cost, market_price, market_value,
                               unrealized_pnl)
        SELECT b, 'S' || s, 'equity', 10, 100, 101, 1010, 10 FROM unnest(%(brokers)s::text[]) b,
               generate_series(0, 199) s;
        INSERT INTO broker_accounts (broker_name, account_id, cash, buying_power, portfolio_value)
        SELECT b, 'acct-' || b, 100000, 100000, 300000 FROM unnest(%(brokers)s::text[]) b;
        """,
    ),
]


def generate(dsn: str, rows: int, progress: Callable[[str], None]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for what, sql in GENERATE:
            started = time.perf_counter()
            for statement in filter(str.strip, sql.split(";")):
                conn.execute(statement, {"n": rows, "brokers": BROKERS})  # type: ignore[arg-type]
            progress(f"  generated {what} in {time.perf_counter() - started:.0f} s")
        conn.execute("VACUUM ANALYZE")


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    """Median milliseconds of ``call`` after warming up."""
    for _ in range(WARMUPS):
        await call()
    samples = []
    for _ in range(RUNS):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def measure(engine: AsyncEngine) -> dict[str, float]:
    async def one_row() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    reader = PortfolioReader(engine)
    started = time.perf_counter()
    await reader.get_unified_portfolio()
    first_read = (time.perf_counter() - started) * 1000
    day = routing.since_hours(24)
    newest = (await routing.recent_routes(engine, routing.RouteFilter(since=day), limit=1))[0]["intent_id"]
    brokers = list(BROKERS)
    queries: dict[str, dict[str, Callable[[], Awaitable[Any]]]] = {
        "portfolio": {
            "unified": reader.get_unified_portfolio,
            "exposure": lambda: reader.get_cross_broker_exposure("S7"),
        },
        "routing": {
            "routes": lambda: routing.recent_routes(engine, routing.RouteFilter(since=day)),
            "story": lambda: intent_story(engine, newest),
            "failovers": lambda: routing.recent_failovers(engine, day),
            "quality": lambda: routing.quality_over_time(engine, brokers, day, timedelta(hours=1)),
        },
        "configuration": {
            "history": lambda: routing.config_history(engine),
            "replays": lambda: routing.recent_replays(engine),
        },
    }
    filtered = {
        "routes_by_broker": routing.RouteFilter(since=day, broker="schwab"),
        "routes_by_symbol": routing.RouteFilter(since=day, symbol="S7"),
        "routes_by_strategy": routing.RouteFilter(since=day, strategy="strat-3"),
        "routes_by_rule": routing.RouteFilter(since=day, rule="score"),
        "routes_week_all_filters": routing.RouteFilter(
            since=routing.since_hours(168), strategy="strat-3", broker="alpaca", symbol="S3"
        ),
    }
    baseline = await timed(one_row)
    results: dict[str, float] = {"baseline_one_row_ms": round(baseline, 2)}
    for tab, calls in queries.items():
        total = 0.0
        for name, call in calls.items():
            ms = await timed(call)
            results[f"{tab}.{name}_ms"] = round(ms, 2)
            total += ms
        results[f"{tab}_tab_total_ms"] = round(total, 2)
        results[f"{tab}_tab_total_to_baseline"] = round(total / baseline, 1)
    for name, where in filtered.items():
        results[f"routing.{name}_ms"] = round(await timed(lambda w=where: routing.recent_routes(engine, w)), 2)  # type: ignore[misc]
    results["portfolio_first_read_after_start_ms"] = round(first_read)
    results["target_per_tab_ms"] = TARGET_MS
    return results


def run(rows: int = 1_000_000, progress: Callable[[str], None] = print) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mbx-bench-") as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "postgres")
        postgres.start()
        try:
            upgrade(postgres.url())
            progress(f"generating {rows:,} routes, orders and fills (a few minutes)")
            generate(postgres.url(), rows, progress)
            engine = make_engine(to_sqlalchemy_url(postgres.url()), pool_size=2)
            progress("timing each tab's queries")
            try:
                results = asyncio.run(measure(engine))
            finally:
                asyncio.run(engine.dispose())
        finally:
            postgres.stop()
    return {"rows": rows, **results}


def main() -> None:
    [rows] = sizes("bench.dashboard_bench", __doc__, ("rows", 1_000_000, "orders in the database"))
    results = run(rows)
    publish("dashboard queries per tab (embedded PostgreSQL, this machine)", "dashboard", results)
    over = [k for k, v in results.items() if k.endswith("_tab_total_ms") and v > TARGET_MS]
    if over:
        print(f"over the {TARGET_MS:.0f} ms target: {', '.join(over)}")


if __name__ == "__main__":
    main()
