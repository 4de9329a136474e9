"""The dashboard's queries with a million rows in the audit trail: each tab's database work per
page run, against a one-row round trip measured in the same run; and the best-execution report's
(`mbx report execution` and the Execution tab) for one month.

One run on an embedded PostgreSQL of its own: 1,000,000 route decisions, orders and fills over
30 days (5 brokers, 200 symbols, 20 strategies), 10,000 failovers, 1,000 config changes and
replays, 1,000 positions; then every query a tab makes, each timed as the median of 20 runs
after 3 warm-ups. The target is at most 100 ms per tab. The broker-status tab reads NATS only
(heartbeats in KV, consumer info), so it has no database figure. The portfolio's first read
after an aggregator starts applies every fill once (its running totals); it is reported apart,
as it is paid once per aggregator start, not per page.

The best-execution report reads every order of its month (the route's quote, the fills' totals
and failover kept on the order row, migration 0014) and takes percentiles per broker, order type
and size bucket: its target is 2 s. For each month the 30 days touch, with the orders that month
holds, it is timed as the CLI and the dashboard ask for it (median of 3 runs after one warm-up:
a closed month is then read from its kept report), computed from the orders each time, each of
its two queries, and a closed month's first ask (computed and kept, one run).

Run with `make bench` (or `python -m bench.dashboard_bench [rows]`); results go to
bench/results/dashboard.json.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
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
from workers.readmodel.execution_report import (
    ORDERS_SQL,
    ROUTER,
    ROUTING_SQL,
    WORK_MEM,
    computed_report,
    execution_report,
    month_window,
)
from workers.readmodel.explain import intent_story
from workers.readmodel.portfolio import PortfolioReader

BROKERS = ["alpaca", "coinbase", "schwab", "robinhood", "ibkr"]
RUNS, WARMUPS = 20, 3
TARGET_MS = 100.0
REPORT_RUNS, REPORT_WARMUPS = 3, 1
REPORT_TARGET_MS = 2000.0

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
                 'quote', jsonb_build_object('source', 'simulated', 'bid', '99.99', 'ask', '100.01', 'mid', '100.00',
                                             'age_ms', 5),
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
                            report_seq, created_at, updated_at, decided_at, reference_price, first_fill_at,
                            acknowledged_at, quote_bid, quote_ask, quote_mid, traded_quantity, traded_value,
                            traded_fees, last_fill_at)
        SELECT r.intent_id, r.strategy_id, r.broker_name, r.intent_id, 'bo-' || r.id, 1, 'S' || (r.id %% 200),
               'equity', CASE WHEN r.id %% 3 = 0 THEN 'sell' ELSE 'buy' END,
               CASE WHEN r.id %% 4 = 0 THEN 'limit' ELSE 'market' END, 10,
               CASE WHEN r.id %% 50 = 0 THEN 0 ELSE 10 END, 100 + (r.id %% 7) * 0.01, 0.01,
               CASE WHEN r.id %% 50 = 0 THEN 'rejected' ELSE 'filled' END, 2, r.decided_at, r.decided_at,
               r.decided_at, 100.00,
               CASE WHEN r.id %% 50 = 0 THEN NULL ELSE r.decided_at + interval '20 milliseconds' END,
               CASE WHEN r.id %% 50 = 0 THEN NULL ELSE r.decided_at + (5 + r.id %% 10) * interval '1 millisecond' END,
               -- As the aggregator writes them (migration 0014): the route's quote, and its fill's
               -- totals and time (the fill below, 20 ms after the order).
               (r.decision -> 'quote' ->> 'bid')::numeric, (r.decision -> 'quote' ->> 'ask')::numeric,
               (r.decision -> 'quote' ->> 'mid')::numeric,
               CASE WHEN r.id %% 50 = 0 THEN NULL ELSE 10 END,
               CASE WHEN r.id %% 50 = 0 THEN NULL ELSE 10 * (100 + (r.id %% 7) * 0.01) END,
               CASE WHEN r.id %% 50 = 0 THEN NULL ELSE 0.01 END,
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
        UPDATE orders o SET failed_over = true FROM failover_events e
         WHERE e.intent_id = o.intent_id AND e.attempt = o.attempt AND e.failed_broker = o.broker_name;
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


async def timed(call: Callable[[], Awaitable[Any]], runs: int = RUNS, warmups: int = WARMUPS) -> float:
    """Median milliseconds of ``call`` after warming up."""
    for _ in range(warmups):
        await call()
    samples = []
    for _ in range(runs):
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
    return results | await measure_report(engine, baseline)


def months_covered(now: datetime) -> list[str]:
    """The months the generated 30 days touch: the one before ``now``'s, and ``now``'s."""
    return [f"{now.replace(day=1) - timedelta(days=1):%Y-%m}", f"{now:%Y-%m}"]


async def measure_report(engine: AsyncEngine, baseline: float) -> dict[str, float]:
    """The best-execution report of each month the data touches (its two queries, as the CLI
    and the dashboard run them), with the orders the month holds."""
    results: dict[str, float] = {}
    for k, month in enumerate(months_covered(datetime.now(UTC)), start=1):
        start, end = month_window(month)
        window = {"start": start, "end": end, "router": ROUTER}

        async def query(sql: str, window: dict[str, Any] = window) -> None:
            async with engine.connect() as conn:  # as execution_report() runs them
                await conn.execute(text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
                (await conn.execute(text(sql), window)).all()

        name = f"report.month_{k}"
        started = time.perf_counter()
        report = await execution_report(engine, month)  # a closed month: computed and kept
        first = (time.perf_counter() - started) * 1000
        orders = sum(r.orders for r in report.rows if r.broker is None)
        total = await timed(lambda m=month: execution_report(engine, m), REPORT_RUNS, REPORT_WARMUPS)  # type: ignore[misc]
        computed = await timed(lambda m=month: computed_report(engine, m), REPORT_RUNS, REPORT_WARMUPS)  # type: ignore[misc]
        closed = month_window(month)[1] <= datetime.now(UTC)
        results |= {
            f"{name}_orders": orders,
            f"{name}_closed": int(closed),
            f"{name}_ms": round(total, 2),
            f"{name}_first_ask_ms": round(first, 2),
            f"{name}_computed_ms": round(computed, 2),
            f"{name}_computed_to_baseline": round(computed / baseline, 1),
            f"{name}_orders_query_ms": round(await timed(lambda: query(ORDERS_SQL), REPORT_RUNS, REPORT_WARMUPS), 2),
            f"{name}_routing_query_ms": round(await timed(lambda: query(ROUTING_SQL), REPORT_RUNS, REPORT_WARMUPS), 2),
            f"{name}_to_baseline": round(total / baseline, 1),
            f"{name}_us_per_order": round(total * 1000 / orders, 1) if orders else 0.0,
        }
    return results | {"report_target_ms": REPORT_TARGET_MS}


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
    slow = [k for k in ("report.month_1_ms", "report.month_2_ms") if results[k] > REPORT_TARGET_MS]
    if slow:
        print(f"over the report's {REPORT_TARGET_MS:.0f} ms target: {', '.join(slow)}")


if __name__ == "__main__":
    main()
