"""Routing a burst through the brokers' rate limits, and latency right after a burst.

On an embedded stack of its own (every worker a process, simulated brokers that answer 429 past
their documented limits, as the real ones do):
1. **A rebalance burst at the documented limits**: N intents (default 600; 60% equities, 20%
   BTC-USD, 10% options, 10% fractional equities) published at once. Reported: the time until
   every one is filled, intents per second, the brokers used, each broker's most requests in
   any window of its limit and its 429 answers, and two bounds measured against:
   - the issue's bound: 0.9 x the sum of the limits of the brokers that can take some of the
     book, in requests per second (a broker without client order ids spends two per order);
   - the book's bound: the shortest time the book could take if every broker spent 0.9 of its
     limit in parallel on orders it can take (a flow problem: fractional equities, for one, go
     only to Alpaca and Robinhood, which together take about 3.5 a second).
2. **Latency right after a burst**, limits raised: p50/p99 from publish to the terminal report
   for 10 s at 200 intents/s on a warmed-up stack (on a machine too slow for that, at the same
   share of what a warm-up burst shows it sustains: ``TARGET_LOAD``), then the same right after
   a 5,000-intent burst of the mixed book; the burst's throughput beside the single-book
   burst's (all equities, the pipeline benchmark's book), measured in the same run;
   CPU per intent of each process.

Run with `make bench` (or `python -m bench.burst_bench [N] [BIG]`); results go to
bench/results/burst.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import psycopg

from bench.pipeline_bench import SYMBOLS, Stack, offer, percentile
from bench.report import publish, sizes
from contracts import AssetClass, BrokerName
from tests.builders import CRYPTO, FRACTIONAL, OPTION, intent_payload
from workers.domain.capabilities import CAPABILITIES

TARGET_RATE = 200
"""Intents a second the latency target is set at."""
TARGET_LOAD = 0.23
"""The load 200/s was where the target was set: 867 intents/s in a burst on the 2-core machine
the pipeline benchmark's table was measured on. A slower machine is offered the same share of
what it sustains (never more than 200/s), so the latency is measured below saturation."""
WARMUP = 1000
"""Intents of the warm-up burst, whose pace sets the latency's rate."""
LATENCY_SECONDS = 10.0
"""How long each latency measurement offers intents (2,000 at 200/s)."""
SHARE = 0.9
"""The part of each broker's limit mbx spends (``RateLimit.share``)."""
MIX: tuple[tuple[str, int], ...] = (("equity", 6), ("crypto", 2), ("option", 1), ("fractional", 1))
"""The rebalance book: kinds of intent and their weight out of ten."""


def book(n: int, run: str, kinds: tuple[tuple[str, int], ...] = MIX) -> list[dict[str, Any]]:
    """``n`` intents of the mixed book, the kinds interleaved as a rebalance sends them."""
    cycle = [kind for kind, weight in kinds for _ in range(weight)]
    out = []
    for k in range(n):
        kind = cycle[k % len(cycle)]
        fields: dict[str, Any] = {"symbol": SYMBOLS[k % len(SYMBOLS)], "quantity": str(1 + k % 20)}
        if kind == "crypto":
            fields = dict(CRYPTO)
        elif kind == "option":
            # Contracts of several strikes and sizes, as a rebalance holds (identical orders at
            # Schwab, which has no client order ids, go one at a time: a different measurement).
            fields = dict(OPTION) | {"symbol": f"AAPL  270115C00{150 + k % 97:03d}000", "quantity": str(1 + k % 7)}
        elif kind == "fractional":
            fields |= FRACTIONAL
        out.append(intent_payload(intent_id=f"{run}-{k}", strategy_id=f"rebalance{k % 4}", **fields))
    return out


def _takes(broker: BrokerName, kind: str) -> bool:
    support = CAPABILITIES[broker].support_for(AssetClass.EQUITY if kind == "fractional" else AssetClass(kind))
    return support is not None and (kind != "fractional" or support.fractional)


def orders_per_second(broker: BrokerName) -> float:
    """Orders a second the broker's documented limit allows mbx (a broker without client order
    ids is asked to list its orders before each placement: two requests an order)."""
    capabilities = CAPABILITIES[broker]
    requests = 1 if capabilities.has_client_order_id else 2
    return SHARE * capabilities.rate_limit_per_minute / 60 / requests


def book_bound_seconds(counts: Mapping[str, int]) -> float:
    """The shortest time in which the brokers, each spending ``SHARE`` of its limit, can place
    ``counts`` (intents per kind): the least T for which a flow assigns every intent to a broker
    that takes its kind within the broker's T x rate (bisection over max-flow)."""
    kinds = [k for k, n in counts.items() if n]
    total = sum(counts[k] for k in kinds)

    def placed_within(seconds: float) -> float:
        # Source -> kind (capacity: its intents) -> broker (unbounded) -> sink (capacity: T x rate).
        nodes = ["s", *kinds, *(str(b) for b in BrokerName), "t"]
        cap: dict[tuple[str, str], float] = Counter()
        for kind in kinds:
            cap["s", kind] = counts[kind]
            for broker in BrokerName:
                if _takes(broker, kind):
                    cap[kind, str(broker)] = float("inf")
        for broker in BrokerName:
            cap[str(broker), "t"] = seconds * orders_per_second(broker)
        flow = 0.0
        while True:  # Edmonds-Karp on a graph of a dozen nodes
            parent: dict[str, str] = {"s": "s"}
            queue = ["s"]
            while queue and "t" not in parent:
                u = queue.pop(0)
                for v in nodes:
                    if v not in parent and cap[u, v] > 1e-12:
                        parent[v] = u
                        queue.append(v)
            if "t" not in parent:
                return flow
            path, v = [], "t"
            while v != "s":
                path.append((parent[v], v))
                v = parent[v]
            push = min(cap[e] for e in path)
            for u, v in path:
                cap[u, v] -= push
                cap[v, u] += push
            flow += push

    low, high = 0.0, total / min(orders_per_second(b) for b in BrokerName)
    while high - low > 0.01:
        middle = (low + high) / 2
        low, high = (middle, high) if placed_within(middle) < total - 1e-6 else (low, middle)
    return high


def issue_bound_per_s(kinds: list[str]) -> float:
    """0.9 x the sum of the limits (requests/s) of the brokers that can take some of the book."""
    able = [b for b in BrokerName if any(_takes(b, k) for k in kinds)]
    return SHARE * sum(CAPABILITIES[b].rate_limit_per_minute / 60 for b in able)


def documented_config(cash: int = 10**12) -> str:
    """Every broker at its documented rate limit (no override), rich, no diversification."""
    brokers = "\n".join(f"  {b}:\n    paper_cash: {cash}" for b in BrokerName)
    return f"brokers:\n{brokers}\nrisk:\n  min_broker_diversification: 1\n  max_broker_allocation: 1\n"


def raised_config(cash: int = 10**12) -> str:
    raised = "rate_limit: {requests: 10000000, per_seconds: 1}"
    daily = "\n    orders_per_day: 1000000000"  # where the broker counts order calls a day (Schwab)
    brokers = "\n".join(
        f"  {b}:\n    {raised}{daily if CAPABILITIES[b].orders_per_day else ''}\n    paper_cash: {cash}"
        for b in BrokerName
    )
    return f"brokers:\n{brokers}\nrisk:\n  min_broker_diversification: 1\n  max_broker_allocation: 1\n"


def ended(dsn: str, run: str) -> dict[str, tuple[str, str, float]]:
    """intent id -> (broker, status, when the terminal report was written) of the run's ended orders."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT intent_id, broker_name, status, updated_at FROM orders WHERE intent_id LIKE %s "
            "AND status IN ('filled', 'cancelled', 'rejected', 'failed', 'expired')",
            (f"{run}-%",),
        ).fetchall()
    return {r[0]: (str(r[1]), str(r[2]), r[3].timestamp()) for r in rows}


def wait_ended(
    dsn: str, run: str, n: int, timeout: float, progress: Callable[[str], None]
) -> dict[str, tuple[str, str, float]]:
    deadline = time.monotonic() + timeout
    last = -1
    while len(done := ended(dsn, run)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(done)} of {n} intents ended within {timeout:.0f}s")
        if len(done) != last:
            progress(f"  {len(done)} of {n} ended")
            last = len(done)
        time.sleep(0.5)
    return done


async def rate_windows(url: str) -> dict[str, dict[str, Any]]:
    """Each simulated broker's side of its rate limit: most requests in one window, 429s."""
    nc = await nats.connect(url)
    try:
        out = {}
        for broker in BrokerName:
            reply = await nc.request(f"mbx.control.{broker}", b"{}", timeout=5)
            out[str(broker)] = json.loads(reply.data).get("rate", {})
        return out
    finally:
        await nc.close()


def rebalance(n: int, progress: Callable[[str], None]) -> dict[str, float]:
    """The burst at documented limits."""
    out: dict[str, float] = {"rebalance_intents": n}
    payloads = book(n, "rebalance")
    per_kind = Counter(_kind_of(k) for k in range(n))
    with tempfile.TemporaryDirectory(prefix="mbx-burst-") as tmp:
        stack = Stack(Path(tmp), sync_always=False, config=documented_config())
        progress("[rebalance] starting the stack (documented rate limits)")
        stack.start()
        try:
            progress(f"[rebalance] {n} intents at once")
            sent = asyncio.run(offer(stack.nats.url, payloads, None))
            done = wait_ended(stack.postgres.url(), "rebalance", n, 1200, progress)
            windows = asyncio.run(rate_windows(stack.nats.url))
        finally:
            stack.stop()
    span = max(t for *_, t in done.values()) - min(sent.values())
    statuses = Counter(status for _, status, _ in done.values())
    used = Counter(broker for broker, _, _ in done.values())
    out["rebalance_seconds"] = round(span, 1)
    out["rebalance_intents_per_s"] = round(n / span, 1)
    issue_bound = issue_bound_per_s(list(per_kind))
    book_seconds = book_bound_seconds(per_kind)
    out["rebalance_issue_bound_per_s"] = round(issue_bound, 1)
    out["rebalance_share_of_issue_bound"] = round(n / span / issue_bound, 3)
    out["rebalance_book_bound_seconds"] = round(book_seconds, 1)
    out["rebalance_share_of_book_bound"] = round(book_seconds / span, 3)
    out["rebalance_filled"] = statuses.get("filled", 0)
    for broker in BrokerName:
        window = windows.get(str(broker), {})
        out[f"rebalance_{broker}_orders"] = used.get(str(broker), 0)
        out[f"rebalance_{broker}_peak_requests_in_a_window"] = window.get("peak", -1)
        out[f"rebalance_{broker}_window_limit"] = window.get("limit", -1)
        out[f"rebalance_{broker}_429s"] = window.get("refused", -1)
    return out


def _kind_of(k: int) -> str:
    cycle = [kind for kind, weight in MIX for _ in range(weight)]
    return cycle[k % len(cycle)]


def after_burst(big: int, progress: Callable[[str], None]) -> dict[str, float]:
    """p50/p99 before and right after a ``big`` mixed burst (limits raised), at 200/s or at the
    same load on a slower machine, and the mixed burst's throughput beside the single-book one,
    with CPU per intent of each process."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mbx-burst-") as tmp:
        stack = Stack(Path(tmp), sync_always=False, config=raised_config())
        progress("[after-burst] starting the stack (rate limits raised)")
        stack.start()
        try:
            dsn = stack.postgres.url()
            # The warm-up is a single-book burst: its pace says what this machine sustains, and
            # the latency is measured at the load 200/s was on the machine the target was set on.
            progress(f"[after-burst] warming up: {WARMUP} intents at once")
            sent = asyncio.run(offer(stack.nats.url, book(WARMUP, "warmup", (("equity", 1),)), None))
            done = wait_ended(dsn, "warmup", WARMUP, 300, lambda _: None)
            pace = WARMUP / (max(t for *_, t in done.values()) - min(sent.values()))
            rate = float(min(TARGET_RATE, max(1, round(pace * TARGET_LOAD))))
            out["warmup_burst_intents_per_s"] = round(pace)
            out["latency_rate_per_s"] = rate
            out |= _latency(stack, "before", rate, progress)
            for label, kinds in (("single", (("equity", 1),)), ("mixed", MIX)):
                before = stack.cpu()
                progress(f"[after-burst] {big} intents of the {label} book at once")
                sent = asyncio.run(offer(stack.nats.url, book(big, label, kinds), None))
                done = wait_ended(dsn, label, big, 600, progress)
                after = stack.cpu()
                span = max(t for *_, t in done.values()) - min(sent.values())
                out[f"{label}_burst_intents_per_s"] = round(big / span)
                if label == "mixed":
                    for process, seconds in after.items():
                        out[f"mixed_{process}_cpu_ms_per_intent"] = round((seconds - before[process]) / big * 1000, 3)
                    out |= _latency(stack, "after", rate, progress)
        finally:
            stack.stop()
    out["ratio_mixed_to_single_burst"] = round(out["mixed_burst_intents_per_s"] / out["single_burst_intents_per_s"], 3)
    return out


async def offer_and_watch(
    url: str, payloads: list[dict[str, Any]], rate: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Publish at ``rate``; returns when each intent was published and when its terminal report
    was seen on the bus (a subscriber of its own, as a strategy would have)."""
    ids = {p["intent_id"] for p in payloads}
    final: dict[str, float] = {}
    every_one = asyncio.Event()
    nc = await nats.connect(url)

    async def on_report(msg: Any) -> None:
        report = json.loads(msg.data)
        if report.get("final") and report["intent_id"] in ids:
            final.setdefault(report["intent_id"], time.time())
            if len(final) == len(ids):
                every_one.set()

    sub = await nc.subscribe("mbx.exec.>", cb=on_report)
    try:
        sent = await offer(url, payloads, rate)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(every_one.wait(), 300)
    finally:
        await sub.unsubscribe()
        await nc.close()
    if len(final) < len(ids):
        raise RuntimeError(f"only {len(final)} of {len(ids)} terminal reports within 300s")
    return sent, final


def _latency(stack: Stack, label: str, rate: float, progress: Callable[[str], None]) -> dict[str, float]:
    """p50/p99 from publish to the terminal report on the bus, over ``LATENCY_SECONDS`` at ``rate``."""
    count = int(rate * LATENCY_SECONDS)
    progress(f"[after-burst] {count} intents at {rate:g}/s ({label} the burst)")
    sent, final = asyncio.run(offer_and_watch(stack.nats.url, book(count, f"rate-{label}"), rate))
    latencies = [(final[i] - sent[i]) * 1000 for i in sent]
    return {
        f"latency_{label}_burst_p50_ms": round(percentile(latencies, 0.5), 1),
        f"latency_{label}_burst_p99_ms": round(percentile(latencies, 0.99), 1),
        f"latency_{label}_burst_max_ms": round(max(latencies), 1),
    }


def run(n: int = 600, big: int = 5000, progress: Callable[[str], None] = print) -> dict[str, float]:
    results = rebalance(n, progress) if n else {}
    if big:
        results |= after_burst(big, progress)
    results["target_share_of_issue_bound"] = 0.9
    results["target_p99_ms_at_200_per_s"] = 50
    return results


def main() -> None:
    n, big = sizes(
        "bench.burst_bench",
        __doc__,
        ("n", 600, "intents in the rebalance; 0 skips it"),
        ("big", 5000, "intents in each after-burst burst; 0 skips that part"),
    )
    started = datetime.now(UTC)
    results = run(n, big, progress=lambda line: print(line, flush=True))
    results["minutes"] = round((datetime.now(UTC) - started).total_seconds() / 60, 1)
    publish("a burst through the brokers' rate limits, and latency after a burst (this machine)", "burst", results)


if __name__ == "__main__":
    main()
