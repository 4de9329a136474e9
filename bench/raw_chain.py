"""The latency benchmark's floor: mbx's durable hops in raw JetStream, with no work.

Publish to stream A (PubAck); hop A, a process of its own, pulls it, writes one KV entry
(create-only, as the router's decision journal does), publishes to B and acks; hop B pulls it
(the moment it arrives stands for "the broker request"), publishes to C and acks; hop C pulls it
and commits one row in Postgres (the row), and a core subscriber of C sees the report. Each hop
is a process, as each mbx worker is, and pulls as mbx's workers do (one message at a time when
idle), on the same nats-server with the same durability.

``python -m bench.raw_chain <hop> <nats url> <dsn> <file>`` runs one hop; hop B appends when
each message reached it to ``<file>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import psycopg
from nats.js.api import KeyValueConfig, StreamConfig

from bench.burst_bench import book
from workers.devstack.processes import spawn

HOPS = ("A", "B", "C")


class RawChain:
    """Sets the chain up on a running nats-server and PostgreSQL, offers messages, and reads
    when each reached hop B, the report subscriber and the row."""

    def __init__(self, url: str, dsn: str, root: Path) -> None:
        self.url = url
        self.dsn = dsn
        self.root = root
        self.sent: dict[str, float] = {}
        self.request: dict[str, float] = {}
        self.report: dict[str, float] = {}
        self._procs: list[Any] = []
        self._watcher: Any = None

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        nc = await nats.connect(self.url)
        js = nc.jetstream()
        for name in HOPS:
            with contextlib.suppress(Exception):
                await js.delete_stream(f"RAW{name}")
            await js.add_stream(StreamConfig(name=f"RAW{name}", subjects=[f"raw{name.lower()}.>"]))
        with contextlib.suppress(Exception):
            await js.delete_key_value("rawjournal")
        await js.create_key_value(KeyValueConfig(bucket="rawjournal", history=1))
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS raw_floor")
            conn.execute("CREATE TABLE raw_floor (id text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
        for hop in HOPS:
            args = [sys.executable, "-m", "bench.raw_chain", hop, self.url, self.dsn, str(self.root / "requests.jsonl")]
            self._procs.append(spawn(args, self.root / f"hop-{hop}.log"))
        deadline = time.monotonic() + 60
        for hop in HOPS:
            while True:
                with contextlib.suppress(Exception):
                    if (await js.consumer_info(f"RAW{hop}", f"raw{hop}")).num_waiting > 0:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"raw hop {hop} did not start; see {self.root}")
                await asyncio.sleep(0.1)
        await nc.close()
        self._watcher = await nats.connect(self.url)

        async def on_report(msg: Any) -> None:
            self.report.setdefault(msg.headers["Nats-Msg-Id"], time.time())

        await self._watcher.subscribe("rawc.>", cb=on_report)

    async def offer(self, run: str, count: int, rate: float | None) -> None:
        """``count`` messages at ``rate`` a second (or at once), as mbx's intents are offered."""
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

    def read_requests(self) -> None:
        path = self.root / "requests.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                self.request.setdefault(record["id"], record["t"])

    async def wait(self, run: str, count: int, timeout: float = 300) -> dict[str, float]:
        """Every one of the run's messages has its row and its report seen; when each row was."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.rows(run)
            if len(rows) >= count and sum(1 for k in self.report if k.startswith(f"{run}-")) >= count:
                return rows
            await asyncio.sleep(0.5)
        raise RuntimeError(f"the raw chain ended only {len(self.rows(run))} of {count} in {timeout:.0f}s")

    async def stop(self) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            with contextlib.suppress(Exception):
                proc.wait(10)
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.close()


async def hop(name: str, url: str, dsn: str, requests: Path) -> None:
    """One hop of the chain: pull from its stream, do its part, ack; forever."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    work: Callable[[Any], Awaitable[None]]
    if name == "A":
        kv = await js.key_value("rawjournal")  # looked up once, as mbx's LazyBucket does

        async def work(msg: Any) -> None:
            msg_id = msg.headers["Nats-Msg-Id"]
            await kv.create(f"d.{msg_id}", msg.data)
            await js.publish("rawb.x", msg.data, headers={"Nats-Msg-Id": msg_id})
            await msg.ack()

    elif name == "B":
        out = requests.open("a", buffering=1)

        async def work(msg: Any) -> None:
            msg_id = msg.headers["Nats-Msg-Id"]
            out.write(json.dumps({"id": msg_id, "t": time.time()}) + "\n")
            await js.publish("rawc.x", msg.data, headers={"Nats-Msg-Id": msg_id})
            await msg.ack()

    else:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        lock = asyncio.Lock()  # one connection: one statement at a time

        async def work(msg: Any) -> None:
            async with lock:
                await conn.execute(
                    "INSERT INTO raw_floor (id) VALUES (%s) ON CONFLICT DO NOTHING", (msg.headers["Nats-Msg-Id"],)
                )
            await msg.ack()

    sub = await js.pull_subscribe(f"raw{name.lower()}.>", durable=f"raw{name}")
    while True:
        try:
            msgs = await sub.fetch(1, timeout=5)
        except TimeoutError:
            continue
        await asyncio.gather(*(work(m) for m in msgs))


def main() -> None:
    name, url, dsn, requests = sys.argv[1:5]
    asyncio.run(hop(name, url, dsn, Path(requests)))


if __name__ == "__main__":
    main()
