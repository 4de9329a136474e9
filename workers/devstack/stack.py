"""``mbx up``: the whole system on one machine, stopped cleanly on Ctrl-C or SIGTERM.

Servers are embedded unless ``MBX_NATS_URL`` / ``MBX_DATABASE_URL`` point elsewhere. Workers
run as separate processes in their own sessions, so Ctrl-C reaches only this supervisor, which
stops the workers first (letting them finish in-flight messages) and the servers last. Every
child also gets the kernel's parent-death signal, so even a killed supervisor leaves nothing
running.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.js.errors import APIError, KeyNotFoundError, NotFoundError
from rich.console import Console
from rich.table import Table

from contracts import BrokerName, BrokerStatus
from contracts.client import split_servers
from workers.devstack.nats import EmbeddedNats, EmbeddedNatsCluster
from workers.devstack.postgres import EmbeddedPostgres
from workers.devstack.processes import port_free, spawn, stop, wait_until
from workers.domain.config import ConfigError, MbxConfig
from workers.ops.security import SecuritySetup, access, route_tls_block
from workers.platform.access import connect_options, with_access
from workers.platform.bus import BUS_UNAVAILABLE, ensure_streams, jetstream, open_bucket, use_replicas
from workers.platform.db.migrate import upgrade
from workers.platform.logs import redact_url
from workers.platform.settings import Settings
from workers.platform.topology import ConsumerSpec

STACK_FILE = "stack.json"
RESTART_DELAY = 2.0
WORKER_STOP_S = 8.0
"""Seconds every worker together gets to stop before it is killed (a worker needs at most
HANDLER_GRACE plus its clean-up steps)."""


def stack_file(data_dir: Path) -> Path:
    return data_dir / STACK_FILE


def read_stack(data_dir: Path) -> dict[str, object] | None:
    """What a running ``mbx up`` wrote about itself, if it is still running."""
    path = stack_file(data_dir)
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    return dict(info)


WORKER_MODULE_ENV = "MBX_WORKER_MODULE"
"""The module the workers run as (``python -m <module> worker ...``; default ``workers``): a
wrapper around ``workers.cli.main`` that instruments a client library, or, in the IBKR bad-day
run, points ib_async at the test's gateway, reaches every worker `mbx up` starts."""


def worker_module() -> str:
    module = os.environ.get(WORKER_MODULE_ENV, "").strip() or "workers"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", module):
        raise ConfigError(f"{WORKER_MODULE_ENV}={module!r} is not a Python module name")
    return module


@dataclass
class WorkerProcess:
    name: str
    args: list[str]
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    died_at: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Variables of this process alone (its metrics port)."""


@dataclass
class Stack:
    settings: Settings
    config: MbxConfig
    nats_port: int = 4222
    pg_port: int = 54329
    dashboard_port: int | None = 8501
    """None: no dashboard."""
    cluster: int = 1
    """Embedded nats-servers: 1, or a cluster of that many on loopback."""
    replicas: int = 1
    """Processes of each worker, sharing its durable consumers."""
    metrics_port: int = 9464
    """The first worker's Prometheus port; the others take the next ones (0: none served)."""
    security: SecuritySetup | None = None
    """Run NATS with these users, permissions and TLS (``mbx up --secure``)."""
    console: Console = field(default_factory=lambda: Console(stderr=False))
    nats: EmbeddedNats | EmbeddedNatsCluster | None = None
    postgres: EmbeddedPostgres | None = None
    workers: list[WorkerProcess] = field(default_factory=list)
    _stopping: bool = False
    _env: dict[str, str] = field(default_factory=dict)
    _dashboard_env: dict[str, str] = field(default_factory=dict)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            nats_url, database_url = self._start_servers()
            self.console.print("[bold]applying migrations[/bold]")
            upgrade(database_url)
            asyncio.run(_ensure_topology(nats_url, self._operator()))
            self._start_workers(nats_url, database_url)
            self.console.print("[bold]waiting for the workers[/bold] to pull and report")
            asyncio.run(self._wait_ready(nats_url))
            dashboard = self._start_dashboard(nats_url, database_url)
            self._announce(nats_url, database_url, dashboard)
            self._supervise()
        except KeyboardInterrupt:
            pass  # Ctrl-C or SIGTERM: the normal way to stop; shutdown() below does the work
        finally:
            self.shutdown()
        return 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self._stopping:
            self._stopping = True
            raise KeyboardInterrupt

    def _start_servers(self) -> tuple[str, str]:
        data = self.settings.data_dir
        nats_url = self.settings.nats_url
        if not nats_url:
            profile = "sync_interval: always" if self.settings.durability == "production" else "default fsync (2 min)"
            sync_always = self.settings.durability == "production"
            extra = self.security.server_config.read_text() if self.security else ""
            route_tls = route_tls_block(self.security) if self.security else ""
            if self.cluster > 1:
                self.console.print(
                    f"[bold]starting a cluster of {self.cluster} nats-servers[/bold] (JetStream, {profile}, "
                    f"{self.settings.stream_replicas} copies of each stream)"
                )
                self.nats = EmbeddedNatsCluster(
                    data / "nats-cluster",
                    size=self.cluster,
                    port=self.nats_port,
                    sync_always=sync_always,
                    extra_config=extra,
                    route_tls=route_tls,
                )
            else:
                self.console.print(f"[bold]starting nats-server[/bold] (JetStream, {profile})")
                self.nats = EmbeddedNats(
                    data / "nats",
                    port=self.nats_port,
                    sync_always=sync_always,
                    monitor_port=self.nats_port + 4000,
                    extra_config=extra,
                )
            self.nats.start()
            nats_url = self.nats.url
        database_url = self.settings.database_url
        if not database_url:
            self.console.print("[bold]starting PostgreSQL[/bold] (first start runs initdb)")
            self.postgres = EmbeddedPostgres(data / "postgres", port=self.pg_port)
            self.postgres.start()
            database_url = self.postgres.url()
        return nats_url, database_url

    def _start_workers(self, nats_url: str, database_url: str) -> None:
        base = [sys.executable, "-m", worker_module(), "worker"]
        kinds = [("router", ["router"])]
        kinds += [(f"executor-{b}", ["executor", "--broker", str(b)]) for b in self.config.enabled_brokers()]
        kinds.append(("aggregator", ["aggregator"]))
        kinds.append(("parents", ["parents"]))
        self.workers = [
            WorkerProcess(name, [*base, *args], self._log(name))
            for kind, args in kinds
            for name in replica_names(kind, self.replicas)
        ]
        self._env = {
            **os.environ,
            "MBX_NATS_URL": nats_url,
            "MBX_DATABASE_URL": database_url,
            "MBX_STREAM_REPLICAS": str(self.settings.stream_replicas),
            "MBX_LOG_FORMAT": "json",
        }
        monitor = self._nats_monitor_url()
        if monitor:
            self._env["MBX_NATS_MONITOR_URL"] = monitor
        for n, worker in enumerate(self.workers):
            if self.metrics_port:
                worker.env = {"MBX_METRICS_PORT": str(self.metrics_port + n)}
            if self.security:
                worker.env |= access(self.security, kind_of(worker.name, self.replicas))
            worker.proc = spawn(worker.args, worker.log_file, env=self._env | worker.env)

    def _nats_monitor_url(self) -> str | None:
        """The embedded nats-server's monitoring endpoint (a cluster's first node), if ours."""
        node = self.nats.nodes[0] if isinstance(self.nats, EmbeddedNatsCluster) else self.nats
        if node is None or not node.monitor_port:
            return None
        return f"http://{node.host}:{node.monitor_port}"

    def _operator_access(self) -> dict[str, str] | None:
        """The operator's credentials (settings field names), for this supervisor and the CLI."""
        if self.security is None:
            return None
        env = access(self.security, "operator")
        return {k.removeprefix("MBX_").lower(): v for k, v in env.items()}

    def _operator(self) -> Settings:
        access_ = self._operator_access()
        return self.settings if access_ is None else with_access(self.settings, access_)

    def _log(self, name: str) -> Path:
        return self.settings.data_dir / "logs" / f"{name}.log"

    async def _wait_ready(self, nats_url: str, timeout: float = 90.0) -> None:
        """Until every durable consumer has a worker pulling and every executor reported in."""
        topology = self.settings.topology
        consumers = [
            topology.router_consumer(),
            topology.router_failover_consumer(),
            *topology.aggregator_consumers(),
            topology.parents_consumer(),
            topology.parents_progress_consumer(),
            *(topology.executor_consumer(b) for b in self.config.enabled_brokers()),
        ]
        nc = await nats.connect(servers=split_servers(nats_url), **connect_options(self._operator()))
        try:
            js = jetstream(nc)
            status_kv = None
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if status_kv is None:
                        status_kv = await open_bucket(js, topology.subjects.status_bucket)
                    waiting = await _not_ready(js, status_kv, consumers, self.config.enabled_brokers())
                except BUS_UNAVAILABLE as exc:  # a cluster still electing its leaders: ask again
                    waiting = [f"NATS to answer ({type(exc).__name__})"]
                if not waiting:
                    return
                dead = [w for w in self.workers if w.proc is not None and w.proc.poll() is not None]
                if dead:
                    raise RuntimeError(f"{dead[0].name} exited during start-up; see {dead[0].log_file}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"workers not ready after {timeout:.0f}s: {', '.join(waiting)}")
                await asyncio.sleep(0.2)
        finally:
            await nc.close()

    def _start_dashboard(self, nats_url: str, database_url: str) -> str | None:
        """Start the dashboard and wait for its health endpoint; its URL, or None (said why)."""
        from workers.devstack import dashboard  # noqa: PLC0415
        from workers.platform.settings import dashboard_database_url  # noqa: PLC0415

        port = self.dashboard_port
        if port is None:
            return None
        if not port_free("127.0.0.1", port):
            self.console.print(
                f"[yellow]dashboard not started[/yellow]: port {port} is in use (use --dashboard-port, "
                "or --no-dashboard)"
            )
            return None
        self.console.print("[bold]starting the dashboard[/bold]")
        reader = dashboard_database_url(self.settings, database_url)
        env = dashboard.environment(nats_url, reader, self.settings.subject_prefix)
        if self.security:
            env |= access(self.security, "operator")  # the dashboard acts for operators
        process = WorkerProcess("dashboard", dashboard.command(port), self.settings.data_dir / "logs" / "dashboard.log")
        process.proc = spawn(process.args, process.log_file, env=env)
        self.workers.append(process)
        self._dashboard_env = env
        try:
            wait_until(
                lambda: dashboard.healthy(port),
                timeout=60,
                what="the dashboard",
                proc=process.proc,
                log_file=process.log_file,
            )
        except RuntimeError as exc:
            self.console.print(f"[yellow]dashboard not started[/yellow]: {exc}")
            return None
        return dashboard.url(port)

    def _announce(self, nats_url: str, database_url: str, dashboard: str | None = None) -> None:
        data = self.settings.data_dir
        stack_file(data).write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "nats_url": nats_url,
                    "database_url": database_url,
                    "nats_access": self._operator_access(),
                    "workers": {w.name: w.proc.pid for w in self.workers if w.proc},
                    "servers": self._server_pids(),
                },
                indent=2,
            )
        )
        table = Table(title="mbx is running", show_header=True)
        table.add_column("component")
        table.add_column("where")
        table.add_row("NATS (JetStream)", nats_url.replace(",", "\n"))
        table.add_row("PostgreSQL", redact_url(database_url))
        for w in self.workers:
            where = f"pid {w.proc.pid if w.proc else '-'}, log {w.log_file}"
            if "MBX_METRICS_PORT" in w.env:
                where += f", metrics :{w.env['MBX_METRICS_PORT']}"
            table.add_row(w.name, f"{dashboard}, {where}" if w.name == "dashboard" and dashboard else where)
        self.console.print(table)
        if dashboard:
            self.console.print(f"Dashboard: [bold]{dashboard}[/bold]")
        self.console.print(
            "Send an order from another terminal:  [bold].venv/bin/mbx submit --symbol AAPL --quantity 10[/bold]"
        )
        self.console.print("Stop everything with Ctrl-C.")

    def _server_pids(self) -> dict[str, int]:
        nodes: list[tuple[str, EmbeddedNats | EmbeddedPostgres | None]] = []
        if isinstance(self.nats, EmbeddedNatsCluster):
            nodes += [(f"nats-{node.server_name}", node) for node in self.nats.nodes]
        else:
            nodes.append(("nats", self.nats))
        nodes.append(("postgres", self.postgres))
        return {name: server.proc.pid for name, server in nodes if server is not None and server.proc is not None}

    def _supervise(self) -> None:
        while not self._stopping:
            for worker in self.workers:
                proc = worker.proc
                if proc is None or proc.poll() is None:
                    continue
                now = time.monotonic()
                if worker.died_at is None:
                    worker.died_at = now
                    self.console.print(
                        f"[red]{worker.name} exited with code {proc.returncode}[/red]; "
                        f"restarting (log: {worker.log_file})"
                    )
                elif now - worker.died_at >= RESTART_DELAY:
                    env = self._dashboard_env if worker.name == "dashboard" else self._env | worker.env
                    worker.proc = spawn(worker.args, worker.log_file, env=env)
                    worker.restarts += 1
                    worker.died_at = None
            time.sleep(0.25)

    def shutdown(self) -> None:
        self._stopping = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        self.console.print("[bold]stopping[/bold] workers")
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        # Every worker stops in parallel under one deadline: a worker abandons what it cannot
        # finish in time un-acked (redelivered later), and one that still hangs is killed.
        deadline = time.monotonic() + WORKER_STOP_S
        for worker in self.workers:
            if worker.proc is not None:
                stop(worker.proc, timeout=max(deadline - time.monotonic(), 0.1))
        if self.postgres is not None:
            self.console.print("[bold]stopping[/bold] PostgreSQL")
            self.postgres.stop()
        if self.nats is not None:
            self.console.print("[bold]stopping[/bold] nats-server" + ("s" if self.cluster > 1 else ""))
            self.nats.stop()
        stack_file(self.settings.data_dir).unlink(missing_ok=True)
        self.console.print("stopped; nothing is left running")
        signal.signal(signal.SIGINT, signal.default_int_handler)


def kind_of(name: str, replicas: int) -> str:
    """``router-2`` -> ``router`` (the role every replica of a worker shares)."""
    return name.rsplit("-", 1)[0] if replicas > 1 else name


def replica_names(kind: str, replicas: int) -> list[str]:
    """``router``, or ``router-1``, ``router-2``... when several processes share its consumers."""
    return [kind] if replicas == 1 else [f"{kind}-{n}" for n in range(1, replicas + 1)]


async def _not_ready(js: Any, status_kv: Any, consumers: list[ConsumerSpec], brokers: list[BrokerName]) -> list[str]:
    missing = []
    for spec in consumers:
        try:
            info = await js.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            missing.append(spec.durable)
            continue
        if not info.num_waiting:
            missing.append(spec.durable)
    for broker in brokers:
        try:
            entry = await status_kv.get(str(broker))
        except KeyNotFoundError:
            missing.append(f"{broker} heartbeat")
            continue
        if not BrokerStatus.model_validate_json(entry.value or b"{}").connected:
            missing.append(f"{broker} heartbeat")
    return missing


NO_PLACEMENT = 10005
"""JetStream's error code for a stream it cannot place on enough peers (a node not joined yet)."""
_NOT_YET: tuple[type[Exception], ...] = (*BUS_UNAVAILABLE, APIError)


async def _ensure_topology(nats_url: str, settings: Settings, timeout: float = 60.0) -> None:
    """Create or update every stream; asked again while NATS cannot answer yet (a cluster just
    started, electing the leaders of the streams it makes)."""
    use_replicas(settings.stream_replicas)
    nc = await nats.connect(servers=split_servers(nats_url), **connect_options(settings))
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await ensure_streams(jetstream(nc), settings.subjects)
                return
            except _NOT_YET as exc:
                # A cluster whose nodes have not all joined yet refuses a replicated stream
                # ("no suitable peers for placement", 10005): it passes as they join.
                forming = isinstance(exc, APIError) and exc.err_code == NO_PLACEMENT
                if isinstance(exc, APIError) and not isinstance(exc, BUS_UNAVAILABLE) and not forming:
                    raise
                if time.monotonic() > deadline:
                    raise RuntimeError(f"NATS made no streams in {timeout:.0f}s: {type(exc).__name__}: {exc}") from None
            await asyncio.sleep(0.5)
    finally:
        await nc.close()


__all__ = ["Stack", "read_stack", "replica_names", "stack_file"]
