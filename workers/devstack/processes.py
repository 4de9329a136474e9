"""Child-process helpers: free ports, readiness polling, and children that die with us."""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


QUIET_FLOOR = 10_000
"""The lowest port ``free_port`` chooses."""
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port(host: str = "127.0.0.1", offsets: Sequence[int] = (0,)) -> int:
    """A port P such that every ``P + offset`` is free now and stays free of outgoing connections.

    Chosen below the kernel's ephemeral range (Linux: 32768 and up), from which every outgoing
    connection takes its local port: a port the kernel handed out for a listener (bind to port
    0) lies in that range, and so do the ports next to it, which connections made a moment later
    take (seen: a cluster node's port taken so between choosing it and starting the node, a
    node's route port likewise). Below it, only a listener can take a port, so a server stopped
    and started again finds its port still free. Where the range is not known, the kernel's
    choice (``offsets`` then only ``(0,)``)."""
    floor = _ephemeral_floor()
    top = floor - max(offsets) - 1
    if top <= QUIET_FLOOR:
        if tuple(offsets) != (0,):
            raise RuntimeError(f"no free block of ports {tuple(offsets)} below the ephemeral range here")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    for _ in range(200):
        base = QUIET_FLOOR + secrets.randbelow(top - QUIET_FLOOR)
        if all(port_free(host, base + offset) for offset in offsets):
            return base
    raise RuntimeError(f"no free block of ports {tuple(offsets)} found between {QUIET_FLOOR} and {floor}")


def _ephemeral_floor() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def port_free(host: str, port: int) -> bool:
    """A server could listen on ``port`` now: nothing listens there and no connection uses it as
    its local port (what a connection test does not see). Bound as nats-server and PostgreSQL
    bind, with SO_REUSEADDR, so a port left in TIME_WAIT by a stopped server counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    # Linux only: the kernel sends SIGTERM to this child when its parent exits for any reason,
    # including SIGKILL, so a crashed supervisor or test run leaves no server behind.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        return  # not Linux: children are stopped by the supervisor's own shutdown only


def spawn(
    args: Sequence[str],
    log_file: Path,
    *,
    user: str | None = None,
    env: dict[str, str] | None = None,
    new_session: bool = True,
) -> subprocess.Popen[bytes]:
    """Start a child whose output goes to ``log_file`` and who dies with this process."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    out = log_file.open("ab")
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs["user"] = user
    try:
        return subprocess.Popen(  # noqa: S603  (arguments are ours, not user input)
            list(args),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env if env is not None else os.environ.copy(),
            start_new_session=new_session,
            preexec_fn=_die_with_parent,  # noqa: PLW1509  (no threads run at spawn time)
            **kwargs,
        )
    finally:
        out.close()


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log_file: Path | None = None,
) -> None:
    """Poll ``check`` until it is true; fail with the log tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}{log_tail(log_file)}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s{log_tail(log_file)}")


def log_tail(log_file: Path | None, lines: int = 15) -> str:
    if log_file is None or not log_file.exists():
        return ""
    text = log_file.read_text(errors="replace").splitlines()[-lines:]
    return f"; last log lines ({log_file}):\n" + "\n".join(text)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal a child and wait; kill it if it does not exit in time."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
