"""Worker processes a chaos test can kill and restart, and the broker books it inspects.

Every worker runs as ``python -m <module> worker ...`` with the test's own subject prefix,
database and config; each writes its log to a file of its own. A kill is a SIGKILL aimed at a
moment when the worker has just fetched work from its durable consumers (their delivered count
moved since the last look, and since the process started), so it lands while messages are in
its hands rather than during interpreter start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nats.js import JetStreamContext

from contracts import BrokerName
from workers.devstack.stack import replica_names
from workers.platform.settings import Settings
from workers.platform.topology import ConsumerSpec

KILL_WAIT_S = 8.0
"""How long to wait for a worker to fetch work before giving up on killing it this round."""
LOOK_EVERY_S = 0.02


@dataclass
class WorkerProcess:
    name: str
    args: list[str]
    consumers: tuple[ConsumerSpec, ...]
    process: asyncio.subprocess.Process | None = None
    delivered_at_start: int = 0
    kills: int = 0
    starts: int = 0
    module: str = "workers"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


@dataclass
class Fleet:
    """The router, one executor per broker and the aggregator (and, asked for, the parent-order
    worker), each a process of its own."""

    settings: Settings
    config_file: Path
    logs: Path
    js: JetStreamContext
    executor_module: str = "workers"
    env: dict[str, str] = field(default_factory=dict)
    replicas: int = 1
    """Processes of each worker, sharing its durable consumers."""
    with_parents: bool = False
    """The parent-order worker too (off: the fleet the older chaos tests were written for)."""
    workers: list[WorkerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        topology = self.settings.topology
        kinds: list[tuple[str, list[str], tuple[ConsumerSpec, ...], str]] = [
            (
                "router",
                ["router"],
                (topology.router_consumer(), topology.router_failover_consumer(), topology.router_cancel_consumer()),
                "workers",
            ),
            *(
                (
                    f"executor-{b}",
                    ["executor", "--broker", str(b)],
                    (topology.executor_consumer(b),),
                    self.executor_module,
                )
                for b in BrokerName
            ),
            ("aggregator", ["aggregator"], topology.aggregator_consumers(), "workers"),
        ]
        if self.with_parents:
            parents = (topology.parents_consumer(), topology.parents_progress_consumer())
            kinds.append(("parents", ["parents"], parents, "workers"))
        self.workers = [
            WorkerProcess(name, args, consumers, module=module)
            for kind, args, consumers, module in kinds
            for name in replica_names(kind, self.replicas)
        ]

    def replicas_of(self, kind: str) -> list[WorkerProcess]:
        """The processes of one worker (``router``, ``executor-alpaca``...)."""
        return [w for w in self.workers if w.name in replica_names(kind, self.replicas)]

    @property
    def kinds(self) -> list[str]:
        return list(dict.fromkeys(w.name.rsplit("-", 1)[0] if self.replicas > 1 else w.name for w in self.workers))

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MBX_")}
        env.update(
            {
                "MBX_NATS_URL": self.settings.nats_url or "",
                "MBX_DATABASE_URL": self.settings.database_url or "",
                "MBX_SUBJECT_PREFIX": self.settings.subject_prefix,
                "MBX_CONFIG_FILE": str(self.config_file),
                "MBX_SIM_REQUEST_LOG": "1",
                "MBX_STREAM_REPLICAS": str(self.settings.stream_replicas),
                "MBX_LOG_FORMAT": "json",
                "MBX_LOG_LEVEL": "WARNING",
            }
        )
        env.update(self.env)
        return env

    async def delivered(self, worker: WorkerProcess) -> int:
        """Messages the worker's durable consumers have handed out so far (redeliveries count)."""
        total = 0
        for spec in worker.consumers:
            with contextlib.suppress(Exception):  # not created yet: nothing handed out
                info = await self.js.consumer_info(spec.stream, spec.durable)
                total += info.delivered.consumer_seq
        return total

    async def start(self, worker: WorkerProcess) -> None:
        worker.delivered_at_start = await self.delivered(worker)
        log = self.logs / f"{worker.name}.log"
        with log.open("ab") as out:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                worker.module,
                "worker",
                *worker.args,
                env=self._environment(),
                stdout=out,
                stderr=out,
            )
        worker.starts += 1

    async def start_all(self) -> None:
        for worker in self.workers:
            await self.start(worker)

    async def kill_in_flight(self, worker: WorkerProcess, rng: random.Random) -> bool:
        """SIGKILL ``worker`` just after it fetched work, then start it again. False if it
        fetched nothing within ``KILL_WAIT_S`` (it is left running)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KILL_WAIT_S
        last = await self.delivered(worker)
        while loop.time() < deadline:
            await asyncio.sleep(LOOK_EVERY_S)
            now = await self.delivered(worker)
            if now > last and now > worker.delivered_at_start and worker.running:
                await asyncio.sleep(rng.uniform(0.0, 0.03))
                assert worker.process is not None
                worker.process.send_signal(signal.SIGKILL)
                await worker.process.wait()
                worker.kills += 1
                await self.start(worker)
                return True
            last = now
        return False

    async def ready(self, timeout: float = 90.0) -> None:
        """Until every durable consumer has a worker pulling from it (started processes import,
        connect and load their state first: seconds each, on shared cores)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for spec in {s.durable: s for w in self.workers for s in w.consumers}.values():
            while True:
                with contextlib.suppress(Exception):  # not created yet
                    if (await self.js.consumer_info(spec.stream, spec.durable)).num_waiting:
                        break
                assert loop.time() < deadline, f"no worker pulls from {spec.durable} after {timeout:.0f} s"
                await asyncio.sleep(0.2)

    async def kill(self, worker: WorkerProcess) -> None:
        """SIGKILL ``worker`` wherever it is in its work (it stays down until started)."""
        if worker.running:
            assert worker.process is not None
            worker.process.send_signal(signal.SIGKILL)
            await worker.process.wait()
            worker.kills += 1

    async def restart_exited(self) -> None:
        """A worker that died by itself (a failpoint) is started again."""
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is not None:
                await self.start(worker)

    async def stop_all(self) -> None:
        for worker in self.workers:
            if worker.running:
                assert worker.process is not None
                worker.process.send_signal(signal.SIGTERM)
        for worker in self.workers:
            if worker.process is not None:
                try:
                    await asyncio.wait_for(worker.process.wait(), 20)
                except TimeoutError:
                    worker.process.kill()
                    await worker.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for worker in self.workers:
            path = self.logs / f"{worker.name}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {worker.name} ---\n" + "\n".join(tail))
        return "\n".join(parts)
