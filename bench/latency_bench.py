"""Latency: what mbx adds to an order, against the same path in raw JetStream, in one run.

On an embedded stack of its own (every worker a process, as `mbx up` runs them, simulated
brokers with their rate limits raised, JetStream's default fsync):
1. **Capacity**: a burst of intents at once; intents per second until every one ended. The
   offered rate below is 25% of it (``LOAD``), so the latency is measured well below saturation.
2. **The floor, raw JetStream on the same nats-server**: the same durable hops with no work. A
   publish to stream A (PubAck); a pull consumer that writes one KV entry (create-only, as the
   router's decision journal does), publishes to stream B and acks; a consumer of B that
   publishes to C and acks ("the broker request" is the moment it receives the message); a core
   subscriber of C (the report on the bus) and a consumer of C that commits one row in Postgres
   and acks (the row).
3. **mbx at the same rate**: time from the strategy's publish to the broker request (the moment
   the simulated broker is asked to place the order: a probe the benchmark adds to each worker
   from outside, ``bench.latency_hook``), to the acknowledged report on the bus (the first
   accepted or filled report a strategy's subscriber sees), and to the row in Postgres (the
   aggregator's transaction that recorded the accepted report). The floor and mbx run in
   alternating slices (``ROUNDS``), so that both see the machine in the same state: on a
   machine shared with other work, a floor measured a minute apart is not a floor.
4. Both again after a burst (``BURST`` intents at once through the raw chain, then as many
   through mbx, default 5,000): mbx's first slice starts as soon as every intent of its burst
   has ended, the floor's right after that.

Reported: p50/p90/p99/max of each, the ratio of each to its floor, CPU milliseconds per intent of
each process (workers, nats-server, PostgreSQL) in the burst and at the offered rate, and the
JetStream and KV round trips per intent on the critical path, counted by the probes (every
request the workers' NATS clients make while an intent is in hand).

Run with `make bench` (or `python -m bench.latency_bench [BURST] [SECONDS]`); results go to
bench/results/latency.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import psycopg

from bench.burst_bench import book, raised_config, wait_ended
from bench.pipeline_bench import Stack, offer, percentile
from bench.raw_chain import RawChain
from bench.report import publish, sizes

ROUNDS = 3
"""Alternating slices of the floor and mbx in each latency measurement."""
LOAD = 0.25
"""The share of the measured capacity offered while latency is measured."""
CAPACITY_INTENTS = 1000
"""Intents of the burst that measures capacity."""
EQUITIES = (("equity", 1),)
ACKNOWLEDGED = {"accepted", "partially_filled", "filled"}
Progress = Callable[[str], None]


def _quantiles(name: str, values: list[float]) -> dict[str, float]:
    out = {
        f"{name}_{label}_ms": round(percentile(values, q), 2)
        for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
    }
    out[f"{name}_max_ms"] = round(max(values), 2)
    return out


class Floor:
    """The raw chain on an event loop of its own thread, so that its slices can alternate with
    mbx's (which the benchmark drives with blocking waits)."""

    def __init__(self, url: str, dsn: str, root: Path) -> None:
        self.chain = RawChain(url, dsn, root)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.chain.start())

    def call(self, work: Any, timeout: float = 900) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def burst(self, run: str, count: int) -> None:
        self.call(self.chain.offer(run, count, None))
        self.call(self.chain.wait(run, count, 600))

    def slice(self, run: str, count: int, rate: float) -> dict[str, list[float]]:
        """``count`` messages at ``rate``: milliseconds to each leg's end."""
        self.call(self.chain.offer(run, count, rate))
        rows = self.call(self.chain.wait(run, count))
        chain = self.chain
        chain.read_requests()
        ids = [i for i in chain.sent if i.startswith(f"{run}-")]
        return {
            "to_request": [(chain.request[i] - chain.sent[i]) * 1000 for i in ids],
            "to_report": [(chain.report[i] - chain.sent[i]) * 1000 for i in ids],
            "to_row": [(rows[i] - chain.sent[i]) * 1000 for i in ids],
        }

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.chain.stop(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def placed(probes: Path) -> dict[str, float]:
    """intent id -> when the simulated broker was first asked to place it (every executor)."""
    out: dict[str, float] = {}
    for path in probes.glob("placed-*.jsonl"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                out.setdefault(record["intent"], record["t"])
    return out


SEGMENTS = (
    ("publish_to_router", "sent", "router:deliver"),
    ("router_until_journal_write", "router:deliver", "router:kv_write"),
    ("journal_write_until_route_publish", "router:kv_write", "router:js_publish"),
    ("route_publish_to_executor", "router:js_publish", "executor:deliver"),
    ("executor_until_ledger_read", "executor:deliver", "executor:kv_read"),
    ("ledger_read_until_request", "executor:kv_read", "request"),
)
"""The stretches of the path to the broker request, between the probes' timestamps."""


def stages(stack: Stack, probes: Path) -> dict[str, dict[str, float]]:
    """intent id -> '<router|executor>:<stage>' -> when it first happened (``bench.latency_hook``)."""
    role = {proc.pid: "executor" if name.startswith("executor") else name for name, proc in stack.workers.items()}
    out: dict[str, dict[str, float]] = {}
    for path in probes.glob("stages-*.jsonl"):
        who = role.get(int(path.stem.split("-")[1]), "?")
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                stage = record["stage"].split(":")[0] if record["stage"].startswith("deliver") else record["stage"]
                out.setdefault(record["intent"], {}).setdefault(f"{who}:{stage}", record["t"])
    return out


def segments(marks: dict[str, dict[str, float]], label: str) -> dict[str, float]:
    """p50 and p99 of each stretch of the path to the broker request, in milliseconds."""
    out: dict[str, float] = {}
    for name, start, end in SEGMENTS:
        spans = [(m[end] - m[start]) * 1000 for m in marks.values() if start in m and end in m]
        if spans:
            out[f"stretch_{label}_{name}_p50_ms"] = round(percentile(spans, 0.5), 2)
            out[f"stretch_{label}_{name}_p99_ms"] = round(percentile(spans, 0.99), 2)
    return out


def counts(stack: Stack, probes: Path) -> dict[str, Counter[str]]:
    """Round trips so far of each worker, by '<phase>:<kind>' (``bench.latency_hook``)."""
    time.sleep(1.2)  # the probes write their counts twice a second
    out: dict[str, Counter[str]] = {}
    for name, proc in stack.workers.items():
        path = probes / f"counts-{proc.pid}.json"
        out[name] = Counter(json.loads(path.read_text())["counts"]) if path.exists() else Counter()
    return out


def round_trips(before: dict[str, Counter[str]], after: dict[str, Counter[str]], n: int) -> dict[str, float]:
    """Per intent, by process role: requests (round trips) made with an intent in hand."""
    roles: dict[str, Counter[str]] = {"router": Counter(), "executor": Counter(), "aggregator": Counter()}
    for name, counted in after.items():
        role = "executor" if name.startswith("executor") else name
        roles[role] += counted - before.get(name, Counter())
    out: dict[str, float] = {}
    critical = {"to_request": 1.0, "to_report": 1.0}  # the strategy's own publish and its PubAck
    for role, counted in roles.items():
        for key, calls in sorted(counted.items()):
            out[f"trips_{role}_{key.replace(':', '_')}_per_intent"] = round(calls / n, 2)
        requests = {k: v for k, v in counted.items() if k.split(":")[1] not in ("ack", "pull", "core_publish")}
        before_place = sum(v for k, v in requests.items() if k.startswith("intent:")) / n
        after_place = sum(v for k, v in requests.items() if k.startswith("placed:")) / n
        if role in ("router", "executor"):
            critical["to_request"] += before_place
            critical["to_report"] += before_place + after_place
    out["trips_critical_to_request_per_intent"] = round(critical["to_request"], 2)
    out["trips_critical_to_report_per_intent"] = round(critical["to_report"], 2)
    return out


async def watch_reports(url: str, ids: set[str], seen: dict[str, float]) -> Any:
    nc = await nats.connect(url)

    async def on_report(msg: Any) -> None:
        report = json.loads(msg.data)
        if report.get("intent_id") in ids and report.get("status") in ACKNOWLEDGED:
            seen.setdefault(report["intent_id"], time.time())

    await nc.subscribe("mbx.exec.>", cb=on_report)
    return nc


def rows(dsn: str, run: str) -> dict[str, float]:
    """intent id -> when the aggregator's transaction recorded its accepted report (and so its
    order row)."""
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT message_id, received_at FROM inbox WHERE message_id LIKE %s AND message_id LIKE %s",
            (f"exec-{run}-%", "%-1-1"),
        ).fetchall()
    return {r[0][len("exec-") :].rsplit("-", 3)[0]: r[1].timestamp() for r in found}


def cpu_per_intent(before: dict[str, float], after: dict[str, float], n: float, prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    executors = 0.0
    for process, seconds in after.items():
        ms = (seconds - before[process]) / n * 1000
        if process.startswith("executor-"):
            executors += ms
        else:
            out[f"{prefix}_{process}_cpu_ms_per_intent"] = round(ms, 3)
    out[f"{prefix}_executors_cpu_ms_per_intent"] = round(executors, 3)
    total = (sum(after.values()) - sum(before.values())) / n * 1000
    out[f"{prefix}_all_processes_cpu_ms_per_intent"] = round(total, 3)
    return out


def mbx_slice(
    stack: Stack, probes: Path, run: str, rate: float, count: int, progress: Progress
) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
    """``count`` intents at ``rate``: milliseconds to the broker request, the report and the row."""
    payloads = book(count, run, EQUITIES)
    ids = {p["intent_id"] for p in payloads}
    reports: dict[str, float] = {}

    async def go() -> dict[str, float]:
        nc = await watch_reports(stack.nats.url, ids, reports)
        try:
            return await offer(stack.nats.url, payloads, rate)
        finally:
            deadline = time.monotonic() + 120
            # Polled: the reports arrive on the subscription's callback.
            while len(reports) < len(ids) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            await nc.close()

    sent = asyncio.run(go())
    wait_ended(stack.postgres.url(), run, count, 300, progress)
    recorded = rows(stack.postgres.url(), run)
    requests = placed(probes)
    missing = [i for i in ids if i not in requests or i not in reports or i not in recorded]
    if missing:
        raise RuntimeError(f"{len(missing)} of {count} intents lack a broker request, report or row, e.g. {missing[0]}")
    marks = stages(stack, probes)
    for i in ids:
        marks.setdefault(i, {}).update({"sent": sent[i], "request": requests[i]})
    return {
        "to_request": [(requests[i] - sent[i]) * 1000 for i in ids],
        "to_report": [(reports[i] - sent[i]) * 1000 for i in ids],
        "to_row": [(recorded[i] - sent[i]) * 1000 for i in ids],
    }, {i: marks[i] for i in ids}


def measure(
    stack: Stack,
    probes: Path,
    floor: Floor,
    label: str,
    rate: float,
    count: int,
    progress: Progress,
    *,
    mbx_first: bool = False,
) -> dict[str, float]:
    """mbx and the floor at ``rate``, in ``ROUNDS`` alternating slices (so both see the machine
    as it is then): latencies to the broker request, the report and the row; mbx's CPU and
    round trips per intent, counted over its slices only."""
    each = max(20, count // ROUNDS)
    legs = ("to_request", "to_report", "to_row")
    mbx: dict[str, list[float]] = {leg: [] for leg in legs}
    raw: dict[str, list[float]] = {leg: [] for leg in legs}
    cpu: Counter[str] = Counter()
    trips_before: dict[str, Counter[str]] = {}
    trips_after: dict[str, Counter[str]] = {}
    marks: dict[str, dict[str, float]] = {}
    for k in range(ROUNDS):
        if k or not mbx_first:
            progress(f"[{label}] round {k + 1} of {ROUNDS}: {each} messages through the raw chain at {rate:g}/s")
            for leg, values in floor.slice(f"raw-{label}{k}", each, rate).items():
                raw[leg] += values
        progress(f"[{label}] round {k + 1} of {ROUNDS}: {each} intents through mbx at {rate:g}/s")
        before, counted = stack.cpu(), counts(stack, probes)
        latencies, slice_marks = mbx_slice(stack, probes, f"lat-{label}{k}", rate, each, progress)
        for leg, values in latencies.items():
            mbx[leg] += values
        marks |= slice_marks
        if mbx_first and not k:
            progress(f"[{label}] round 1 of {ROUNDS}: {each} messages through the raw chain at {rate:g}/s")
            for leg, values in floor.slice(f"raw-{label}{k}", each, rate).items():
                raw[leg] += values
        after, counted_after = stack.cpu(), counts(stack, probes)
        cpu.update({process: seconds - before[process] for process, seconds in after.items()})
        for name, c in counted.items():
            trips_before[name] = trips_before.get(name, Counter()) + c
        for name, c in counted_after.items():
            trips_after[name] = trips_after.get(name, Counter()) + c
    out: dict[str, float] = {}
    for leg in legs:
        out |= _quantiles(f"floor_{label}_{leg}", raw[leg])
        out |= _quantiles(f"mbx_{label}_{leg}", mbx[leg])
    out |= cpu_per_intent(dict.fromkeys(cpu, 0.0), dict(cpu), each * ROUNDS, f"mbx_{label}_at_rate")
    out |= {f"{label}_{k}": v for k, v in round_trips(trips_before, trips_after, each * ROUNDS).items()}
    out |= segments(marks, label)
    return out


def idle(stack: Stack, seconds: float, progress: Progress) -> dict[str, float]:
    """CPU milliseconds a second each process spends with no intent in flight (timers,
    heartbeats, pulls, watches): at a low rate, a large part of the CPU per intent."""
    progress(f"[stack] {seconds:g} s idle")
    before = stack.cpu()
    time.sleep(seconds)
    after = stack.cpu()
    out = cpu_per_intent(before, after, seconds, "idle")
    return {key.replace("_per_intent", "_per_s"): value for key, value in out.items()}


def capacity(stack: Stack, probes: Path, label: str, n: int, progress: Progress) -> dict[str, float]:
    """``n`` intents at once: intents per second until the last ended, and CPU per intent."""
    before = stack.cpu()
    progress(f"[mbx] {n} intents at once ({label})")
    sent = asyncio.run(offer(stack.nats.url, book(n, label, EQUITIES), None))
    done = wait_ended(stack.postgres.url(), label, n, 900, progress)
    after = stack.cpu()
    span = max(t for *_, t in done.values()) - min(sent.values())
    return {f"{label}_intents_per_s": round(n / span, 1)} | cpu_per_intent(before, after, n, label)


def ratios(out: dict[str, float]) -> dict[str, float]:
    ratio: dict[str, float] = {}
    for label in ("quiet", "after_burst"):
        for leg in ("to_request", "to_report", "to_row"):
            for q in ("p50", "p90", "p99", "max"):
                ratio[f"ratio_{label}_{leg}_{q}"] = round(
                    out[f"mbx_{label}_{leg}_{q}_ms"] / max(out[f"floor_{label}_{leg}_{q}_ms"], 0.001), 2
                )
    return ratio


def run(
    burst: int = 5000,
    seconds: float = 15.0,
    progress: Progress = print,
    *,
    capacity_intents: int = CAPACITY_INTENTS,
    warmup: int = 300,
    idle_s: float = 10.0,
) -> dict[str, float]:
    """The whole benchmark; the keyword sizes are smaller in the test that keeps it working."""
    out: dict[str, float] = {"burst_intents": burst, "seconds_at_rate": seconds, "load_share": LOAD}
    with tempfile.TemporaryDirectory(prefix="mbx-latency-") as tmp:
        probes = Path(tmp) / "probes"
        probes.mkdir()
        stack = Stack(
            Path(tmp),
            sync_always=False,
            config=raised_config(),
            module="bench.latency_hook",
            env={"MBX_BENCH_PROBES": str(probes)},
        )
        progress("[stack] starting (workers as processes, probes added, rate limits raised)")
        stack.start()
        try:
            dsn = stack.postgres.url()
            progress(f"[mbx] warming up: {warmup} intents at once")
            asyncio.run(offer(stack.nats.url, book(warmup, "warmup", EQUITIES), None))
            wait_ended(dsn, "warmup", warmup, 300, lambda _: None)
            out |= idle(stack, idle_s, progress)
            out |= capacity(stack, probes, "capacity", capacity_intents, progress)
            rate = max(1.0, round(out["capacity_intents_per_s"] * LOAD, 1))
            count = max(50, int(rate * seconds))
            out["offered_rate_per_s"] = rate
            out["intents_at_rate"] = count
            floor = Floor(stack.nats.url, dsn, Path(tmp) / "raw")
            try:
                out |= measure(stack, probes, floor, "quiet", rate, count, progress)
                progress(f"[floor] {burst} messages at once through the raw chain")
                floor.burst("rawburst", burst)
                out |= capacity(stack, probes, "burst", burst, progress)
                # mbx's first slice right after its burst, the floor's right after it.
                out |= measure(stack, probes, floor, "after_burst", rate, count, progress, mbx_first=True)
            finally:
                floor.stop()
        finally:
            stack.stop()
    out |= ratios(out)
    out["target_ratio_to_request_p50"] = 1.5
    out["target_ratio_to_request_p99"] = 2.0
    return out


def commit() -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    return "unknown"


def main() -> None:
    burst, seconds = sizes(
        "bench.latency_bench",
        __doc__,
        ("burst", 5000, "intents in the burst before the second measurement"),
        ("seconds", 15, "seconds each latency measurement offers intents"),
    )
    started = datetime.now(UTC)
    results = run(burst, float(seconds), progress=lambda line: print(line, flush=True))
    results["minutes"] = round((datetime.now(UTC) - started).total_seconds() / 60, 1)
    results["cores"] = os.cpu_count() or 1
    print(f"measured at commit {commit()} (uncommitted changes: see git status)")
    publish("latency against raw JetStream (embedded stack, workers as processes, this machine)", "latency", results)


if __name__ == "__main__":
    main()
