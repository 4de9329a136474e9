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
   aggregator's transaction that recorded the accepted report).
4. Both again right after a burst (``BURST`` intents at once, default 5,000).

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
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import psycopg
from nats.js.api import KeyValueConfig, StreamConfig

from bench.burst_bench import book, raised_config, wait_ended
from bench.pipeline_bench import Stack, offer, percentile
from bench.report import publish, sizes

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


class RawChain:
    """The floor: three durable hops, a KV write and a Postgres row, no work, in this process."""

    def __init__(self, url: str, dsn: str) -> None:
        self.url = url
        self.dsn = dsn
        self.sent: dict[str, float] = {}
        self.request: dict[str, float] = {}
        self.report: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._conns: list[Any] = []

    async def start(self) -> None:
        nc = await nats.connect(self.url)
        self._conns.append(nc)
        js = nc.jetstream()
        for name in ("A", "B", "C"):
            with contextlib.suppress(Exception):
                await js.delete_stream(f"RAW{name}")
            await js.add_stream(StreamConfig(name=f"RAW{name}", subjects=[f"raw{name.lower()}.>"]))
        with contextlib.suppress(Exception):
            await js.delete_key_value("rawjournal")
        await js.create_key_value(KeyValueConfig(bucket="rawjournal", history=1))
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS raw_floor")
            conn.execute("CREATE TABLE raw_floor (id text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
        self._tasks.append(asyncio.create_task(self._hop("A", self._journal_and_forward("b"))))
        self._tasks.append(asyncio.create_task(self._hop("B", self._forward("c"))))
        self._tasks.append(asyncio.create_task(self._hop("C", await self._row())))
        watcher = await nats.connect(self.url)
        self._conns.append(watcher)

        async def on_report(msg: Any) -> None:
            self.report.setdefault(msg.headers["Nats-Msg-Id"], time.time())

        await watcher.subscribe("rawc.>", cb=on_report)

    async def _hop(self, stream: str, work: Callable[[Any], Any]) -> None:
        """A pull consumer of ``stream``, fetching as mbx's workers do (one at a time when idle)."""
        nc = await nats.connect(self.url)
        self._conns.append(nc)
        sub = await nc.jetstream().pull_subscribe(f"raw{stream.lower()}.>", durable=f"raw{stream}")
        while True:
            try:
                msgs = await sub.fetch(1, timeout=5)
            except TimeoutError:
                continue
            await asyncio.gather(*(work(m) for m in msgs))

    def _journal_and_forward(self, to: str) -> Callable[[Any], Any]:
        buckets: dict[int, Any] = {}  # looked up once, as mbx's LazyBucket does

        async def work(msg: Any) -> None:
            js = msg._client.jetstream()
            msg_id = msg.headers["Nats-Msg-Id"]
            kv = buckets.get(id(msg._client))
            if kv is None:
                kv = buckets[id(msg._client)] = await js.key_value("rawjournal")
            await kv.create(f"d.{msg_id}", msg.data)
            await js.publish(f"raw{to}.x", msg.data, headers={"Nats-Msg-Id": msg_id})
            await msg.ack()

        return work

    def _forward(self, to: str) -> Callable[[Any], Any]:
        async def work(msg: Any) -> None:
            msg_id = msg.headers["Nats-Msg-Id"]
            self.request.setdefault(msg_id, time.time())
            await msg._client.jetstream().publish(f"raw{to}.x", msg.data, headers={"Nats-Msg-Id": msg_id})
            await msg.ack()

        return work

    async def _row(self) -> Callable[[Any], Any]:
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        self._conns.append(conn)
        lock = asyncio.Lock()

        async def work(msg: Any) -> None:
            async with lock:
                await conn.execute(
                    "INSERT INTO raw_floor (id) VALUES (%s) ON CONFLICT DO NOTHING", (msg.headers["Nats-Msg-Id"],)
                )
            await msg.ack()

        return work

    async def offer(self, run: str, count: int, rate: float | None) -> None:
        nc = await nats.connect(self.url)
        js = nc.jetstream()
        payload = json.dumps(book(1, "raw")[0]).encode()
        started = time.time()
        pending: list[Any] = []
        for k in range(count):
            msg_id = f"{run}-{k}"
            if rate:
                delay = started + k / rate - time.time()
                if delay > 0:
                    await asyncio.gather(*pending)
                    pending = []
                    await asyncio.sleep(delay)
            self.sent[msg_id] = time.time()
            pending.append(js.publish("rawa.x", payload, headers={"Nats-Msg-Id": msg_id}))
            if len(pending) >= 200:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
        await nc.close()

    def rows(self, run: str) -> dict[str, float]:
        with psycopg.connect(self.dsn) as conn:
            found = conn.execute("SELECT id, at FROM raw_floor WHERE id LIKE %s", (f"{run}-%",)).fetchall()
        return {r[0]: r[1].timestamp() for r in found}

    async def wait(self, run: str, count: int, timeout: float = 300) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.rows(run)
            if len(rows) >= count and sum(1 for k in self.report if k.startswith(f"{run}-")) >= count:
                return rows
            await asyncio.sleep(0.5)
        raise RuntimeError(f"the raw chain ended only {len(self.rows(run))} of {count} in {timeout:.0f}s")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in self._conns:
            with contextlib.suppress(Exception):
                await conn.close()


async def floor(url: str, dsn: str, rate: float, count: int, burst: int, progress: Progress) -> dict[str, float]:
    """The raw chain at ``rate``, then ``burst`` at once and at ``rate`` again right after."""
    chain = RawChain(url, dsn)
    await chain.start()
    out: dict[str, float] = {}
    try:
        for label, before in (("quiet", 0), ("after_burst", burst)):
            if before:
                progress(f"[floor] {before} messages at once through the raw chain")
                await chain.offer(f"rawburst-{label}", before, None)
                await chain.wait(f"rawburst-{label}", before, 600)
            run = f"raw-{label}"
            progress(f"[floor] {count} messages at {rate:g}/s ({label})")
            await chain.offer(run, count, rate)
            rows = await chain.wait(run, count)
            ids = [i for i in chain.sent if i.startswith(f"{run}-")]
            out |= _quantiles(f"floor_{label}_to_request", [(chain.request[i] - chain.sent[i]) * 1000 for i in ids])
            out |= _quantiles(f"floor_{label}_to_report", [(chain.report[i] - chain.sent[i]) * 1000 for i in ids])
            out |= _quantiles(f"floor_{label}_to_row", [(rows[i] - chain.sent[i]) * 1000 for i in ids])
    finally:
        await chain.stop()
    return out


def placed(probes: Path) -> dict[str, float]:
    """intent id -> when the simulated broker was first asked to place it (every executor)."""
    out: dict[str, float] = {}
    for path in probes.glob("placed-*.jsonl"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                out.setdefault(record["intent"], record["t"])
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


def cpu_per_intent(before: dict[str, float], after: dict[str, float], n: int, prefix: str) -> dict[str, float]:
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


def measure(stack: Stack, probes: Path, label: str, rate: float, count: int, progress: Progress) -> dict[str, float]:
    """mbx at ``rate``: latencies to the broker request, the report and the row; CPU; trips."""
    run = f"lat-{label}"
    payloads = book(count, run, EQUITIES)
    ids = {p["intent_id"] for p in payloads}
    reports: dict[str, float] = {}
    cpu_before, trips_before = stack.cpu(), counts(stack, probes)

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

    progress(f"[mbx] {count} intents at {rate:g}/s ({label})")
    sent = asyncio.run(go())
    wait_ended(stack.postgres.url(), run, count, 300, progress)
    cpu_after, trips_after = stack.cpu(), counts(stack, probes)
    recorded = rows(stack.postgres.url(), run)
    requests = placed(probes)
    missing = [i for i in ids if i not in requests or i not in reports or i not in recorded]
    if missing:
        raise RuntimeError(f"{len(missing)} of {count} intents lack a broker request, report or row, e.g. {missing[0]}")
    out = _quantiles(f"mbx_{label}_to_request", [(requests[i] - sent[i]) * 1000 for i in ids])
    out |= _quantiles(f"mbx_{label}_to_report", [(reports[i] - sent[i]) * 1000 for i in ids])
    out |= _quantiles(f"mbx_{label}_to_row", [(recorded[i] - sent[i]) * 1000 for i in ids])
    out |= cpu_per_intent(cpu_before, cpu_after, count, f"mbx_{label}_at_rate")
    out |= {f"{label}_{k}": v for k, v in round_trips(trips_before, trips_after, count).items()}
    return out


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


def run(burst: int = 5000, seconds: float = 15.0, progress: Progress = print) -> dict[str, float]:
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
            progress("[mbx] warming up: 300 intents at once")
            asyncio.run(offer(stack.nats.url, book(300, "warmup", EQUITIES), None))
            wait_ended(dsn, "warmup", 300, 300, lambda _: None)
            out |= capacity(stack, probes, "capacity", CAPACITY_INTENTS, progress)
            rate = max(1.0, round(out["capacity_intents_per_s"] * LOAD, 1))
            count = max(50, int(rate * seconds))
            out["offered_rate_per_s"] = rate
            out["intents_at_rate"] = count
            out |= asyncio.run(floor(stack.nats.url, dsn, rate, count, burst, progress))
            out |= measure(stack, probes, "quiet", rate, count, progress)
            out |= capacity(stack, probes, "burst", burst, progress)
            out |= measure(stack, probes, "after_burst", rate, count, progress)
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
