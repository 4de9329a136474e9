"""`mbx up` as a user runs it: separate processes, embedded servers, Ctrl-C, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from workers.devstack.processes import free_port

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; it only waits for its parent to reap it.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_text()))
        if proc.poll() is not None:
            raise AssertionError(f"mbx up exited early with {proc.returncode}")
        time.sleep(0.1)
    raise AssertionError("mbx up did not come up in time")


@contextmanager
def mbx_up(
    tmp_path: Path, *args: str, **env_vars: str
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, object], dict[str, str]]]:
    """Run `mbx up` as a user would (no MBX_* variables but those given); kill it if the test fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MBX_")}
    env.update({"MBX_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200", **env_vars})
    with (tmp_path / "up.log").open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "workers", "up", *args], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield up, wait_for(tmp_path / "data" / "stack.json", up, timeout=120), env
        finally:
            if up.poll() is None:
                up.kill()
                up.wait(10)


def test_up_runs_the_system_submit_fills_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    """The README's `make run` flow: up, submit 10 AAPL from another terminal, Ctrl-C."""
    nats_port, pg_port = free_port(), free_port()
    with mbx_up(tmp_path, "--nats-port", str(nats_port), "--pg-port", str(pg_port)) as (up, stack, env):
        assert stack["nats_url"] == f"nats://127.0.0.1:{nats_port}"
        pids = [*dict(stack["workers"]).values(), *dict(stack["servers"]).values()]  # type: ignore[call-overload]
        assert len(pids) == 9  # router, five executors, aggregator, nats-server, postgres

        submit = subprocess.run(
            [sys.executable, "-m", "workers", "submit", "--symbol", "AAPL", "--quantity", "10"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        assert "routed to alpaca" in submit.stdout
        assert "filled at alpaca 10 @" in submit.stdout
        status = subprocess.run(
            [sys.executable, "-m", "workers", "status"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"nats://127.0.0.1:{nats_port}: reachable" in status.stdout  # found through the stack file
        assert "executor-schwab" in status.stdout

        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    deadline = time.monotonic() + 10
    while any(alive(int(p)) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in pids if alive(int(p))] == []
    assert not (tmp_path / "data" / "stack.json").exists()
    assert "nothing is left running" in (tmp_path / "up.log").read_text()


def test_up_uses_external_servers_when_urls_are_set(tmp_path: Path, servers: Any) -> None:
    """With MBX_NATS_URL and MBX_DATABASE_URL set, mbx up starts only the workers; `mbx down`
    from another terminal stops it."""
    with mbx_up(tmp_path, MBX_NATS_URL=servers.nats_url, MBX_DATABASE_URL=servers.database_url) as (up, stack, env):
        assert stack["servers"] == {}
        assert stack["nats_url"] == servers.nats_url
        assert len(dict(stack["workers"])) == 7  # type: ignore[call-overload]
        assert not (tmp_path / "data" / "nats").exists()
        assert not (tmp_path / "data" / "postgres").exists()
        down = subprocess.run(
            [sys.executable, "-m", "workers", "down"], env=env, capture_output=True, text=True, timeout=90, check=False
        )
        assert down.returncode == 0, down.stdout + down.stderr
        assert up.wait(60) == 0
