"""Child-process helpers: free ports, readiness polling, and children that die with us."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
            raise RuntimeError(f"{what} exited with code {proc.returncode}{_tail(log_file)}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s{_tail(log_file)}")


def _tail(log_file: Path | None, lines: int = 15) -> str:
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
