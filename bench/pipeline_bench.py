"""End to end: intents published -> routed -> placed at zero-latency simulated brokers -> fills
persisted in Postgres, beside the raw JetStream limit measured in the same run.

On an embedded stack of its own (NATS, PostgreSQL, and every worker as its own process, as
`mbx up` runs them), for each durability profile (default, and `sync_interval: always`):
1. baseline: raw nats-py JetStream publish + pull-consume of the same payload, one hop;
2. N intents (default 20,000) published as fast as possible: sustained intents per second
   fully persisted (route, order and fill rows committed);
3. fixed offered rates (200/s and 1,000/s): latency from publish to the persisted fill (the
   order row's commit time), p50, p90, p99 and max;
4. CPU seconds and peak RSS of each worker process.

Run with `make bench` (or `python -m bench.pipeline_bench [N]`); results go to
bench/results/pipeline.json. A few hundred intents run in `make test` (no timing asserted).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import psycopg

from bench.report import publish
from contracts import BrokerName
from tests.builders import intent_payload
from workers.bus import ensure_streams
from workers.db.migrate import upgrade
from workers.devstack.nats import EmbeddedNats
from workers.devstack.postgres import EmbeddedPostgres
from workers.devstack.processes import spawn
from workers.settings import Settings

SYMBOLS = ["AAPL", "MSFT", "SPY", "NVDA", "QQQ", "TSLA", "AMZN", "META"]


def _proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS in MB) of a live process, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cpu, peak


class Stack:
    """Embedded servers and one process per worker, in a temporary directory."""

    def __init__(self, root: Path, sync_always: bool) -> None:
        self.root = root
        self.nats = EmbeddedNats(root / "nats", sync_always=sync_always)
        self.postgres = EmbeddedPostgres(root / "postgres")
        self.workers: dict[str, Any] = {}

    def start(self) -> None:
        self.nats.start()
        self.postgres.start()
        upgrade(self.postgres.url())
        config = self.root / "bench.yaml"
        brokers = "\n".join(f"  {b}:\n    rate_limit: {{requests: 10000000, per_seconds: 1}}" for b in BrokerName)
        config.write_text(f"brokers:\n{brokers}\nrisk:\n  min_broker_diversification: 1\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MBX_")}
        env |= {
            "MBX_NATS_URL": self.nats.url,
            "MBX_DATABASE_URL": self.postgres.url(),
            "MBX_CONFIG_FILE": str(config),
            "MBX_LOG_LEVEL": "WARNING",
            "MBX_LOG_FORMAT": "json",
        }
        asyncio.run(self._streams())
        commands = {"router": ["router"], "aggregator": ["aggregator"]}
        commands |= {f"executor-{b}": ["executor", "--broker", str(b)] for b in BrokerName}
        for name, args in commands.items():
            self.workers[name] = spawn(
                [sys.executable, "-m", "workers", "worker", *args], self.root / "logs" / f"{name}.log", env=env
            )
        asyncio.run(self._wait_ready())

    async def _streams(self) -> None:
        nc = await nats.connect(self.nats.url)
        await ensure_streams(nc.jetstream(), Settings(nats_url=self.nats.url).subjects)
        await nc.close()

    async def _wait_ready(self) -> None:
        """Every worker's durable consumer has a pull waiting: they are all consuming."""
        subjects = Settings(nats_url=self.nats.url).subjects
        specs = [subjects.router_consumer(), *subjects.aggregator_consumers()]
        specs += [subjects.executor_consumer(b) for b in BrokerName]
        nc = await nats.connect(self.nats.url)
        js = nc.jetstream()
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                waiting = []
                for spec in specs:
                    try:
                        waiting.append((await js.consumer_info(spec.stream, spec.durable)).num_waiting > 0)
                    except Exception:
                        waiting.append(False)
                if all(waiting):
                    await asyncio.sleep(2)  # the first heartbeats reach the router
                    return
                await asyncio.sleep(0.2)
        finally:
            await nc.close()
        raise RuntimeError(f"the workers did not start; see {self.root / 'logs'}")

    def stats(self) -> dict[str, tuple[float, float]]:
        return {name: _proc_stats(proc.pid) for name, proc in self.workers.items()}

    def stop(self) -> None:
        for proc in self.workers.values():
            proc.terminate()
        for proc in self.workers.values():
            try:
                proc.wait(30)
            except Exception:
                proc.kill()
        self.postgres.stop()
        self.nats.stop()


async def raw_jetstream(url: str, payload: bytes, n: int) -> float:
    """Messages per second through one JetStream hop: publish n, pull-consume n."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="RAW", subjects=["raw.>"])
    started = time.perf_counter()
    for start in range(0, n, 500):
        await asyncio.gather(*(js.publish(f"raw.{k}", payload) for k in range(start, min(start + 500, n))))
    psub = await js.pull_subscribe("raw.>", durable="raw")
    received = 0
    while received < n:
        msgs = await psub.fetch(min(500, n - received), timeout=5)
        for m in msgs:
            await m.ack()
        received += len(msgs)
    elapsed = time.perf_counter() - started
    await js.delete_stream("RAW")
    await nc.close()
    return n / elapsed


def _payloads(n: int, run: str) -> list[dict[str, Any]]:
    return [
        intent_payload(
            intent_id=f"{run}-{k}",
            strategy_id=f"bench{k % 4}",
            symbol=SYMBOLS[k % len(SYMBOLS)],
            quantity=str(1 + k % 20),
        )
        for k in range(n)
    ]


async def offer(url: str, payloads: list[dict[str, Any]], rate: float | None) -> dict[str, float]:
    """Publish the intents (at ``rate`` per second, or as fast as possible); returns the
    publish time of each."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    sent: dict[str, float] = {}
    started = time.time()
    pending: list[Any] = []
    for k, p in enumerate(payloads):
        if rate:
            delay = started + k / rate - time.time()
            if delay > 0:
                if pending:
                    await asyncio.gather(*pending)
                    pending = []
                await asyncio.sleep(delay)
        sent[p["intent_id"]] = time.time()
        data = json.dumps(p).encode()
        pending.append(
            js.publish(f"mbx.orders.intent.{p['strategy_id']}", data, headers={"Nats-Msg-Id": p["intent_id"]})
        )
        if len(pending) >= 200:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    await nc.close()
    return sent


def persisted(dsn: str, run: str) -> dict[str, float]:
    """intent id -> commit time of its filled order row, for this run's intents."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT intent_id, updated_at FROM orders WHERE status = 'filled' AND intent_id LIKE %s", (f"{run}-%",)
        ).fetchall()
    return {r[0]: r[1].timestamp() for r in rows}


def wait_persisted(dsn: str, run: str, n: int, timeout: float, progress: Callable[[str], None]) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        done = persisted(dsn, run)
        if len(done) >= n:
            return done
        if len(done) != last:
            progress(f"  {len(done)} of {n} persisted")
            last = len(done)
        time.sleep(0.5)
    raise RuntimeError(f"only {len(persisted(dsn, run))} of {n} intents persisted within {timeout:.0f}s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def profile(
    sync_always: bool, n: int, rates: list[tuple[float, int]], progress: Callable[[str], None]
) -> dict[str, float]:
    name = "always" if sync_always else "default"
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mbx-pipeline-") as tmp:
        stack = Stack(Path(tmp), sync_always)
        progress(f"[{name}] starting the stack")
        stack.start()
        try:
            sample = json.dumps(_payloads(1, "sample")[0]).encode()
            out[f"{name}_raw_jetstream_msgs_per_s"] = round(
                asyncio.run(raw_jetstream(stack.nats.url, sample, max(n, 2000)))
            )
            dsn = stack.postgres.url()
            progress(f"[{name}] {n} intents as fast as possible")
            sent = asyncio.run(offer(stack.nats.url, _payloads(n, "burst"), None))
            done = wait_persisted(dsn, "burst", n, 600, progress)
            span = max(done.values()) - min(sent.values())
            out[f"{name}_burst_intents_per_s"] = round(n / span)
            out[f"{name}_ratio_pipeline_to_raw"] = round(
                out[f"{name}_burst_intents_per_s"] / out[f"{name}_raw_jetstream_msgs_per_s"], 4
            )
            for rate, count in rates:
                run = f"rate{int(rate)}"
                progress(f"[{name}] {count} intents at {rate:.0f}/s")
                sent = asyncio.run(offer(stack.nats.url, _payloads(count, run), rate))
                done = wait_persisted(dsn, run, count, 300, progress)
                latencies = [(done[i] - sent[i]) * 1000 for i in sent]
                for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
                    out[f"{name}_{int(rate)}_per_s_latency_{label}_ms"] = round(percentile(latencies, q), 1)
                out[f"{name}_{int(rate)}_per_s_latency_max_ms"] = round(max(latencies), 1)
            for worker, (cpu, rss) in stack.stats().items():
                out[f"{name}_{worker}_cpu_s"] = round(cpu, 1)
                out[f"{name}_{worker}_peak_rss_mb"] = round(rss, 1)
        finally:
            stack.stop()
    return out


def run(
    n: int = 20_000,
    rates: list[tuple[float, int]] | None = None,
    profiles: tuple[bool, ...] = (False, True),
    progress: Callable[[str], None] = print,
) -> dict[str, float]:
    rates = rates if rates is not None else [(200.0, 2000), (1000.0, 5000)]
    results: dict[str, float] = {"intents": n}
    for sync_always in profiles:
        results |= profile(sync_always, n, rates, progress)
    results["target_intents_per_s"] = 1500
    results["target_p99_ms_at_200_per_s"] = 50
    return results


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    started = datetime.now(UTC)
    results = run(n, progress=lambda line: print(line, flush=True))
    results["minutes"] = round((datetime.now(UTC) - started).total_seconds() / 60, 1)
    publish("end-to-end pipeline (embedded stack, workers as processes, this machine)", "pipeline", results)


if __name__ == "__main__":
    main()
