"""End to end: intents published -> routed -> placed at zero-latency simulated brokers -> fills
persisted in Postgres, beside the raw JetStream limit measured in the same run.

On an embedded stack of its own (NATS, PostgreSQL, and every worker as its own process, as
`mbx up` runs them), for each durability profile (default, and `sync_interval: always`):
1. baselines: raw nats-py JetStream publish + pull-consume of the same payload, one hop, and raw
   batched psycopg inserts (rows per second);
2. N intents (default 20,000) published as fast as possible: sustained intents per second
   fully persisted (route, order and fill rows committed);
3. fixed offered rates (200/s and 1,000/s), measured first on a warmed-up stack: latency from
   publish until the route, filled order and fill rows are all written, p50, p90, p99 and max;
4. CPU per intent of every process (workers, nats-server, PostgreSQL) during the burst, and the
   rate the machine's cores would allow at that cost: what bounds the pipeline;
5. memory: 100,000 more intents in rounds of 10,000, each worker's RSS after the first round
   and after the last (default profile); CPU seconds and peak RSS of each worker.

Run with `make bench` (or `python -m bench.pipeline_bench [N] [SOAK]`); results go to
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

from bench.aggregator_bench import raw_insert
from bench.report import publish, sizes
from contracts import BrokerName
from tests.builders import intent_payload
from workers.devstack.nats import EmbeddedNats
from workers.devstack.postgres import EmbeddedPostgres
from workers.devstack.processes import spawn
from workers.domain.capabilities import CAPABILITIES
from workers.platform.bus import ensure_streams
from workers.platform.db.migrate import upgrade
from workers.platform.settings import Settings

SYMBOLS = ["AAPL", "MSFT", "SPY", "NVDA", "QQQ", "TSLA", "AMZN", "META"]


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS in MB) of a live process, from /proc."""
    fields = _stat_fields(pid)
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, _status_mb(pid, "VmHWM:")


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def _tree_cpu(root: int) -> float:
    """CPU seconds of a process and all its descendants, live or exited (PostgreSQL runs a
    process per connection; an exited child's time is in its parent's cutime/cstime)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    total = 0
    for pid in tree:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


class Stack:
    """Embedded servers and one process per worker, in a temporary directory."""

    def __init__(
        self,
        root: Path,
        sync_always: bool,
        config: str | None = None,
        module: str = "workers",
        env: dict[str, str] | None = None,
    ) -> None:
        """``config``: the YAML the workers run with (default: every broker, rate limits raised);
        ``module``: what runs each worker (``python -m <module> worker ...``; the latency
        benchmark's probes wrap ``workers``), with ``env`` added to its environment."""
        self.root = root
        self.config_text = config
        self.module = module
        self.extra_env = env or {}
        self.nats = EmbeddedNats(root / "nats", sync_always=sync_always)
        self.postgres = EmbeddedPostgres(root / "postgres")
        self.workers: dict[str, Any] = {}

    def start(self) -> None:
        self.nats.start()
        self.postgres.start()
        upgrade(self.postgres.url())
        config = self.root / "bench.yaml"
        # A benchmark trades far more than a paper account's 100,000 USD: the cash is raised too.
        brokers = "\n".join(
            f"  {b}:\n    rate_limit: {{requests: 10000000, per_seconds: 1}}\n"
            + ("    orders_per_day: 1000000000\n" if CAPABILITIES[b].orders_per_day else "")
            + "    paper_cash: 1000000000000"
            for b in BrokerName
        )
        config.write_text(self.config_text or f"brokers:\n{brokers}\nrisk:\n  min_broker_diversification: 1\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MBX_")}
        env |= {
            "MBX_NATS_URL": self.nats.url,
            "MBX_DATABASE_URL": self.postgres.url(),
            "MBX_CONFIG_FILE": str(config),
            "MBX_LOG_LEVEL": "WARNING",
            "MBX_LOG_FORMAT": "json",
        }
        env |= self.extra_env
        asyncio.run(self._streams())
        commands = {"router": ["router"], "aggregator": ["aggregator"]}
        commands |= {f"executor-{b}": ["executor", "--broker", str(b)] for b in BrokerName}
        for name, args in commands.items():
            self.workers[name] = spawn(
                [sys.executable, "-m", self.module, "worker", *args], self.root / "logs" / f"{name}.log", env=env
            )
        asyncio.run(self._wait_ready())

    async def _streams(self) -> None:
        nc = await nats.connect(self.nats.url)
        await ensure_streams(nc.jetstream(), Settings(nats_url=self.nats.url).subjects)
        await nc.close()

    async def _wait_ready(self) -> None:
        """Every worker's durable consumer has a pull waiting: they are all consuming."""
        topology = Settings(nats_url=self.nats.url).topology
        specs = [topology.router_consumer(), *topology.aggregator_consumers()]
        specs += [topology.executor_consumer(b) for b in BrokerName]
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

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of every worker and of the two servers."""
        out = {name: cpu for name, (cpu, _) in self.stats().items()}
        assert self.nats.proc is not None and self.postgres.proc is not None
        out["nats-server"] = _tree_cpu(self.nats.proc.pid)
        out["postgres"] = _tree_cpu(self.postgres.proc.pid)
        return out

    def rss(self) -> dict[str, float]:
        """Resident memory now, MB, of every worker."""
        return {name: _status_mb(proc.pid, "VmRSS:") for name, proc in self.workers.items()}

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


PERSISTED = """
    SELECT o.intent_id, greatest(o.updated_at, route.received_at, max(fill.received_at))
      FROM orders o
      JOIN inbox route ON route.message_id = 'route-' || o.intent_id || '-' || o.attempt
      JOIN trade_logs t ON t.intent_id = o.intent_id AND t.broker_name = o.broker_name
      -- a fill's id is '<broker>:<broker's fill id>', its message id 'fill-<broker>-<broker's fill id>'
      JOIN inbox fill
        ON fill.message_id = 'fill-' || t.broker_name || '-' || substr(t.fill_id, length(t.broker_name) + 2)
     WHERE o.status = 'filled' AND o.intent_id LIKE %s
  GROUP BY o.intent_id, o.updated_at, route.received_at
"""


def persisted(dsn: str, run: str) -> dict[str, float]:
    """intent id -> when it was fully persisted, for this run's intents whose route, filled
    order and fill rows are all written: the latest of the transactions that wrote them (each
    row's time is its transaction's, the aggregator's ``now()``)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(PERSISTED, (f"{run}-%",)).fetchall()
    return {r[0]: r[1].timestamp() for r in rows}


def filled(dsn: str, run: str) -> int:
    """How many of this run's orders are filled: a cheap count to poll while waiting (the full
    check joins three tables and, run every half second, would load the server it measures)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM orders WHERE status = 'filled' AND intent_id LIKE %s", (f"{run}-%",)
        ).fetchone()
    return int(row[0]) if row else 0


def wait_filled(dsn: str, run: str, n: int, timeout: float, progress: Callable[[str], None]) -> None:
    deadline = time.monotonic() + timeout
    last = -1
    while (count := filled(dsn, run)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count} of {n} intents filled within {timeout:.0f}s")
        if count != last:
            progress(f"  {count} of {n} filled")
            last = count
        time.sleep(0.5)


def wait_persisted(dsn: str, run: str, n: int, timeout: float, progress: Callable[[str], None]) -> dict[str, float]:
    """Wait until every one of the run's ``n`` intents is persisted; returns when each was."""
    wait_filled(dsn, run, n, timeout, progress)
    for _ in range(60):
        done = persisted(dsn, run)
        if len(done) >= n:
            return done
        time.sleep(0.5)
    raise RuntimeError(f"{n} orders filled but only {len(done)} with their route and fill rows written")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def burst(stack: Stack, name: str, n: int, progress: Callable[[str], None]) -> dict[str, float]:
    """N intents as fast as possible: sustained rate, and CPU per intent of every process."""
    out: dict[str, float] = {}
    before = stack.cpu()
    progress(f"[{name}] {n} intents as fast as possible")
    sent = asyncio.run(offer(stack.nats.url, _payloads(n, "burst"), None))
    wait_filled(stack.postgres.url(), "burst", n, 600, progress)
    after = stack.cpu()  # before the benchmark's own join below adds to PostgreSQL's CPU
    done = wait_persisted(stack.postgres.url(), "burst", n, 60, progress)
    span = max(done.values()) - min(sent.values())
    out[f"{name}_burst_intents_per_s"] = round(n / span)
    total = 0.0
    for process, seconds in after.items():
        per_intent = (seconds - before[process]) / n * 1000
        total += per_intent
        out[f"{name}_{process}_cpu_ms_per_intent"] = round(per_intent, 3)
    out[f"{name}_cpu_ms_per_intent_all_processes"] = round(total, 3)
    # If CPU were the only limit: every core busy, this much CPU per intent.
    out[f"{name}_cpu_bound_intents_per_s"] = round((os.cpu_count() or 1) * 1000 / total)
    out[f"{name}_cpu_busy_share_during_burst"] = round(total * n / 1000 / span / (os.cpu_count() or 1), 2)
    return out


def offered_rate(stack: Stack, name: str, rate: float, count: int, progress: Callable[[str], None]) -> dict[str, float]:
    """Intents at a fixed rate: latency from publish to the persisted fill."""
    out: dict[str, float] = {}
    run = f"rate{int(rate)}"
    progress(f"[{name}] {count} intents at {rate:.0f}/s")
    sent = asyncio.run(offer(stack.nats.url, _payloads(count, run), rate))
    done = wait_persisted(stack.postgres.url(), run, count, 300, progress)
    latencies = [(done[i] - sent[i]) * 1000 for i in sent]
    for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        out[f"{name}_{int(rate)}_per_s_latency_{label}_ms"] = round(percentile(latencies, q), 1)
    out[f"{name}_{int(rate)}_per_s_latency_max_ms"] = round(max(latencies), 1)
    return out


def soak(stack: Stack, name: str, n: int, progress: Callable[[str], None]) -> dict[str, float]:
    """N more intents in rounds of up to 10,000, each fully persisted before the next: each
    worker's resident memory after the first round and after the last (growth means a leak)."""
    size = min(10_000, n)
    rounds = max(1, n // size)
    after: list[dict[str, float]] = []  # each worker's RSS after each round
    for k in range(rounds):
        progress(f"[{name}] soak round {k + 1} of {rounds} ({(k + 1) * size} intents)")
        asyncio.run(offer(stack.nats.url, _payloads(size, f"soak{k}"), None))
        wait_persisted(stack.postgres.url(), f"soak{k}", size, 600, lambda _: None)
        after.append(stack.rss())
    first, middle, last = after[0], after[len(after) // 2], after[-1]
    out: dict[str, float] = {f"{name}_soak_intents": rounds * size}
    for worker in last:
        out[f"{name}_{worker}_rss_mb_first_round"] = round(first[worker], 1)
        out[f"{name}_{worker}_rss_mb_last_round"] = round(last[worker], 1)
        out[f"{name}_{worker}_rss_growth_mb"] = round(last[worker] - first[worker], 1)
        # A leak keeps growing; warming caches and the allocator settle in the first half.
        out[f"{name}_{worker}_rss_growth_mb_second_half"] = round(last[worker] - middle[worker], 1)
    return out


def profile(
    sync_always: bool, n: int, rates: list[tuple[float, int]], soak_n: int, progress: Callable[[str], None]
) -> dict[str, float]:
    name = "always" if sync_always else "default"
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mbx-pipeline-") as tmp:
        stack = Stack(Path(tmp), sync_always)
        progress(f"[{name}] starting the stack")
        stack.start()
        try:
            # Latency first, on a warmed-up stack: measured after the burst it would include the
            # burst's after-effects (p99 70-79 ms here, against 21-30 ms before it; autovacuum of the
            # new rows is the likely cause, not verified).
            progress(f"[{name}] warming up")
            asyncio.run(offer(stack.nats.url, _payloads(300, "warmup"), None))
            wait_persisted(stack.postgres.url(), "warmup", 300, 120, lambda _: None)
            for rate, count in rates:
                out |= offered_rate(stack, name, rate, count, progress)
            sample = json.dumps(_payloads(1, "sample")[0]).encode()
            raw = asyncio.run(raw_jetstream(stack.nats.url, sample, max(n, 2000)))
            out[f"{name}_raw_jetstream_msgs_per_s"] = round(raw)
            rows = max(4 * n, 8000)
            out[f"{name}_raw_batched_insert_rows_per_s"] = round(rows / raw_insert(stack.postgres.url(), rows))
            out |= burst(stack, name, n, progress)
            out[f"{name}_ratio_pipeline_to_raw_jetstream"] = round(out[f"{name}_burst_intents_per_s"] / raw, 4)
            if soak_n:
                out |= soak(stack, name, soak_n, progress)
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
    soak_n: int = 0,
    progress: Callable[[str], None] = print,
) -> dict[str, float]:
    """``soak_n`` intents more (in rounds of 10,000) measure memory growth, default profile only."""
    rates = rates if rates is not None else [(200.0, 2000), (1000.0, 5000)]
    results: dict[str, float] = {"intents": n}
    for sync_always in profiles:
        results |= profile(sync_always, n, rates, 0 if sync_always else soak_n, progress)
    results["target_intents_per_s"] = 1500
    results["target_p99_ms_at_200_per_s"] = 50
    results["target_rss_mb"] = 200
    return results


def main() -> None:
    n, soak_n = sizes(
        "bench.pipeline_bench",
        __doc__,
        ("n", 20_000, "intents in the burst"),
        ("soak", 100_000, "intents more, in rounds of 10,000, for memory; 0 skips"),
    )
    started = datetime.now(UTC)
    results = run(n, soak_n=soak_n, progress=lambda line: print(line, flush=True))
    results["minutes"] = round((datetime.now(UTC) - started).total_seconds() / 60, 1)
    publish("end-to-end pipeline (embedded stack, workers as processes, this machine)", "pipeline", results)


if __name__ == "__main__":
    main()
