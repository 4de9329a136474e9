"""`mbx whatif` on 100,000 recorded intents: the audit trail read back, every first attempt routed
again under another config and the summary built, against the bare ``route()`` of the same
intents under that config, measured in the same run.

One run on an embedded PostgreSQL of its own. The book is recorded the way the stack records it:
each intent (equities, fractional and dollar-sized orders, crypto, options, limit orders, some
with a strategy's broker preference, over six days) is routed by the router's ``route()`` under a
desk's config, in a market that varies (quotes, a broker down now and then, one rate-limited or
with a queue, measured fill scores); the orders its approval rule held carry the steps of an
operator's approval. The decisions and those steps are stored by the aggregator's own
``AuditStore.apply`` in batches, so ``multi_broker_routes``, ``orders`` and ``approvals`` hold
what the aggregator would. Then, under another config (other weights, two new rules, a notional
limit, other approval rules):

- the replay in process, step by step, through the functions `mbx whatif` runs (SQL read,
  decisions rebuilt, replayed, summary and JSON report built);
- the command itself, `python -m workers whatif --since 7d --json ...`, as an operator runs it
  (interpreter start and imports included);
- the baseline: ``route()`` alone on the same intents in the same markets under the other config,
  the floor any replay that calls the router's own function pays.

The target (issue 31) is 100,000 intents in under 30 s on this machine. Run with `make bench` (or
`python -m bench.whatif_bench [intents]`); results go to bench/results/whatif.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.report import publish, sizes
from contracts import BrokerName, OrderIntent, RouteDecision, Subjects
from workers.aggregator.persistence import AuditStore, Envelope
from workers.cli.whatif import collector_paused, report
from workers.devstack.postgres import EmbeddedPostgres
from workers.domain.approvals import Hold, approval_rule
from workers.domain.config import config_to_json, parse_config
from workers.domain.quotes import Quote, assess
from workers.platform.db.engine import make_engine
from workers.platform.db.migrate import upgrade
from workers.platform.settings import to_sqlalchemy_url
from workers.readmodel.whatif import recorded_book
from workers.router.registry import BrokerHealth
from workers.router.rules import MarketView, route
from workers.router.whatif import recorded_decision, replay

TARGET_S = 30.0
BATCH = 2_000
EQUITIES = ["AAPL", "MSFT", "SPY", "NVDA", "QQQ", "TSLA", "AMZN", "META", "GOOG", "IWM"]
CRYPTO = ["BTC-USD", "ETH-USD", "SOL-USD"]
OPTIONS = ["AAPL  270115C00200000", "SPY   261218P00450000"]
PRICES = {"BTC-USD": Decimal(60_000), "ETH-USD": Decimal(3_000), "SOL-USD": Decimal(150)}

RECORDED = parse_config(
    {
        "approvals": {"rules": [{"name": "large", "match": {"min_notional": 150_000}}]},
        "routing": {
            "rules": [
                {
                    "name": "big-equity-scored",
                    "match": {"asset_class": ["equity"], "min_notional": 20_000},
                    "exclude": ["alpaca"],
                },
                {
                    "name": "crypto-hedge",
                    "match": {"asset_class": ["crypto"], "strategy": ["hedge-*"]},
                    "exclude": ["coinbase"],
                },
            ]
        },
    }
)
OTHER = parse_config(
    {
        "approvals": {
            "rules": [
                {"name": "large", "match": {"min_notional": 100_000}, "approvers": 2},
                {"name": "hedge-crypto", "match": {"asset_class": ["crypto"], "strategy": ["hedge-*"]}},
            ]
        },
        "risk": {"max_order_notional": 200_000},
        "routing": {
            "weights": {"cost": 0.7, "speed": 0.1, "fill": 0.2},
            "rules": [
                {
                    "name": "big-equity-scored",
                    "match": {"asset_class": ["equity"], "min_notional": 10_000},
                    "exclude": ["alpaca"],
                },
                {
                    "name": "crypto-hedge",
                    "match": {"asset_class": ["crypto"], "strategy": ["hedge-*"]},
                    "exclude": ["coinbase"],
                },
                {"name": "etfs-ibkr", "match": {"symbol": ["SPY", "QQQ", "IWM"]}, "prefer": ["ibkr"]},
                {"name": "options-ibkr", "match": {"asset_class": ["option"]}, "prefer": ["ibkr"]},
            ],
        },
    }
)


def intent(k: int) -> OrderIntent:
    """The ``k``-th intent of the book: mostly equities, a crypto and an option share, some
    fractional, dollar-sized or limit orders, a few with the strategy's own broker."""
    kind = k % 20
    side = "sell" if k % 3 == 0 else "buy"
    base: dict[str, Any] = {"intent_id": f"wb-{k}", "strategy_id": f"{'hedge' if k % 7 == 0 else 'alpha'}-{k % 5}"}
    if kind < 3:
        symbol = CRYPTO[k % len(CRYPTO)]
        fields = {"symbol": symbol, "asset_class": "crypto", "quantity": Decimal("0.05") * (1 + k % 9)}
    elif kind == 3:
        fields = {"symbol": OPTIONS[k % len(OPTIONS)], "asset_class": "option", "quantity": Decimal(1 + k % 4)}
    elif kind == 4:
        fields = {"symbol": EQUITIES[k % 10], "asset_class": "equity", "quantity": Decimal("0.5")}
    elif kind == 5:
        fields = {"symbol": EQUITIES[k % 10], "asset_class": "equity", "notional": Decimal(250 + k % 1000)}
    else:
        # One in 40 a block of 1,000 to 1,500 shares (100,000 to 225,000 USD), the rest up to 300.
        size = 1000 + k % 500 if k % 40 == 7 else 1 + (k * 37) % 300
        fields = {"symbol": EQUITIES[k % 10], "asset_class": "equity", "quantity": Decimal(size)}
    if kind == 6:
        fields |= {"order_type": "limit", "limit_price": "100"}
    if k % 50 == 0:
        fields["broker"] = list(BrokerName)[k % 5]
    return OrderIntent.model_validate(base | fields | {"side": side})


def market(k: int, symbol: str, at: datetime) -> MarketView:
    """The market the ``k``-th intent was routed in: a fresh quote, every broker up with its
    measured latency and fill score, except a broker down, rate-limited or queued now and then."""
    price = PRICES.get(symbol, Decimal(100) + k % 50)
    spread = price / 10_000
    check = assess(
        symbol, Quote(symbol, price - spread, price + spread, at - timedelta(milliseconds=40), "bench"), 5.0, at
    )
    health = {
        b: BrokerHealth(True, "heartbeat fresh", latency_ms=10.0 + 40 * i + k % 11) for i, b in enumerate(BrokerName)
    }
    queued: dict[BrokerName, int] = {}
    if k % 23 == 0:
        health[BrokerName.SCHWAB] = BrokerHealth(False, "schwab is down: simulated outage")
    if k % 31 == 0:
        health[BrokerName.ROBINHOOD] = BrokerHealth(True, "rate budget spent", rate_limit_headroom=0.0)
    if k % 29 == 0:
        queued[BrokerName.IBKR] = 40
    scores = {b: 0.55 + ((k + 13 * i) % 40) / 100 for i, b in enumerate(BrokerName)}
    return MarketView(reference_price=check.price, health=health, fill_scores=scores, price_check=check, queued=queued)


def book(n: int, now: datetime, progress: Callable[[str], None]) -> list[tuple[RouteDecision, MarketView, Hold | None]]:
    """``n`` first attempts routed under RECORDED over the last six days, with their markets and,
    for those RECORDED's approval rule held, the hold an operator approved a minute before."""
    decided: list[tuple[RouteDecision, MarketView, Hold | None]] = []
    for k in range(n):
        at = now - timedelta(days=6) * (1 - k / n)
        order = intent(k)
        view = market(k, order.symbol, at)
        rule = approval_rule(order, RECORDED, view.reference_price)
        hold = None
        if rule is not None:
            held_at = at - timedelta(minutes=1)
            hold = Hold.new(order, rule, held_at, None).approve("desk", "", held_at + timedelta(seconds=30))
        outcome = route(order, RECORDED, market=view, config_version=7)
        if isinstance(outcome, RouteDecision):
            decided.append((outcome.model_copy(update={"created_at": at}), view, hold))
        if (k + 1) % 25_000 == 0:
            progress(f"  routed {k + 1:,} of {n:,}")
    return decided


async def record(
    url: str, recorded: list[tuple[RouteDecision, MarketView, Hold | None]], progress: Callable[[str], None]
) -> None:
    """Stored by the aggregator's own batch write, as the stack stores them: each decision, and
    each step of the holds before them."""
    engine = make_engine(url, pool_size=1)
    store, subjects = AuditStore(engine), Subjects()
    try:
        for start in range(0, len(recorded), BATCH):
            chunk = recorded[start : start + BATCH]
            envelopes = [Envelope(subjects.route(d.broker, d.strategy_id), d) for d, _, _ in chunk]
            for _, _, hold in chunk:
                if hold is not None:
                    events = (hold.event(k) for k in range(len(hold.steps)))
                    envelopes += [Envelope(subjects.approval(e.step), e) for e in events]
            await store.apply(envelopes)
            if (start // BATCH + 1) % 10 == 0:
                progress(f"  stored {start + len(chunk):,} of {len(recorded):,}")
    finally:
        await engine.dispose()


@contextmanager
def stopwatch(into: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    into[name] = round(time.perf_counter() - started, 3)


async def replay_in_process(
    url: str, since: datetime, progress: Callable[[str], None]
) -> tuple[dict[str, float], dict[str, Any]]:
    """The steps of `mbx whatif` (``run_whatif``, then the JSON report), each timed, under the
    paused collector the command runs them under."""
    steps: dict[str, float] = {}
    with collector_paused():
        engine = make_engine(url, pool_size=1)
        try:
            with stopwatch(steps, "sql_read_s"):
                recorded = await recorded_book(engine, since)
        finally:
            await engine.dispose()
        progress(f"  read {len(recorded.decisions):,} decisions in {steps['sql_read_s']:.1f} s; rebuilding them")
        with stopwatch(steps, "decisions_rebuilt_s"):
            decisions = [recorded_decision(row) for row in recorded.decisions]
        progress(f"  rebuilt in {steps['decisions_rebuilt_s']:.1f} s; replaying")
        with stopwatch(steps, "replay_s"):
            result = replay(decisions, OTHER, recorded.held_when_recorded())
        progress(f"  replayed in {steps['replay_s']:.1f} s; summing up")
        with stopwatch(steps, "summary_and_report_s"):
            written = report(result, recorded.rejected_unrouted)
            json.dumps(written, default=str)
    return steps, written


def command(database_url: str, tmp: Path) -> tuple[float, dict[str, Any]]:
    """`python -m workers whatif` as an operator runs it; seconds and the report it wrote."""
    config_file, out = tmp / "other.json", tmp / "whatif.json"
    config_file.write_bytes(config_to_json(OTHER))
    env = {**os.environ, "MBX_DATABASE_URL": database_url}
    argv = [sys.executable, "-m", "workers", "whatif", "--config", str(config_file), "--since", "7d"]
    started = time.perf_counter()
    done = subprocess.run([*argv, "--json", str(out)], env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"mbx whatif failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds, json.loads(out.read_text())


def bare_route(recorded: list[tuple[RouteDecision, MarketView, Hold | None]]) -> float:
    """Seconds of ``route()`` alone, under the same paused collector as the replay."""
    with collector_paused():
        started = time.perf_counter()
        for decision, view, _ in recorded:
            route(decision.intent, OTHER, market=view)
        return time.perf_counter() - started


def run(intents: int = 100_000, progress: Callable[[str], None] = print) -> dict[str, float]:
    load_before = os.getloadavg()[0]
    now = datetime.now(UTC)
    progress(f"routing {intents:,} intents under the recorded config")
    recorded = book(intents, now, progress)
    with tempfile.TemporaryDirectory(prefix="mbx-bench-") as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "postgres")
        postgres.start()
        try:
            upgrade(postgres.url())
            url = to_sqlalchemy_url(postgres.url())
            progress(f"storing {len(recorded):,} decisions through the aggregator's batch write")
            asyncio.run(record(url, recorded, progress))
            progress("the bare route() of the same intents under the other config (baseline)")
            baseline = bare_route(recorded)
            progress("replaying in process, step by step")
            steps, written = asyncio.run(replay_in_process(url, now - timedelta(days=7), progress))
            progress("running `mbx whatif --since 7d --json` as a command")
            seconds, from_command = command(postgres.url(), Path(tmp))
        finally:
            postgres.stop()
    if any(from_command[k] != written[k] for k in ("replayed", "changed", "rejected", "held", "held_before")):
        raise SystemExit("the command and the in-process replay disagree: the benchmark measured different work")
    in_process = sum(steps.values())
    return {
        "intents": intents,
        "decisions_replayed": written["replayed"],
        "decisions_changed": written["changed"],
        "would_be_rejected": written["rejected"],
        "would_be_held": written["held"],
        "held_when_recorded": written["held_before"],
        **steps,
        "whatif_in_process_total_s": round(in_process, 3),
        "mbx_whatif_command_s": round(seconds, 3),
        "baseline_bare_route_s": round(baseline, 3),
        "ratio_in_process_to_bare_route": round(in_process / baseline, 2),
        "ratio_command_to_bare_route": round(seconds / baseline, 2),
        "target_s": TARGET_S,
        "load_average_1m_at_start": round(load_before, 2),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    [intents] = sizes("bench.whatif_bench", __doc__, ("intents", 100_000, "recorded intents to replay"))
    results = run(intents)
    publish("mbx whatif on recorded intents (embedded PostgreSQL, this machine)", "whatif", results)
    if results["mbx_whatif_command_s"] > TARGET_S:
        print(f"over the {TARGET_S:.0f} s target: mbx whatif took {results['mbx_whatif_command_s']:.1f} s")


if __name__ == "__main__":
    main()
