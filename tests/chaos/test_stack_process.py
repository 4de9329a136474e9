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

from workers.devstack import dashboard
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


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float, home: Path) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_text()))
        if proc.poll() is not None:
            raise AssertionError(f"mbx up exited early with {proc.returncode}\n{log_tails(home)}")
        time.sleep(0.1)
    raise AssertionError(f"mbx up did not come up in time\n{log_tails(home)}")


def log_tails(home: Path, lines: int = 15) -> str:
    """The end of `mbx up`'s own output and of every worker's log: what a failed start said."""
    tails = []
    for log in [home / "up.log", *sorted((home / "data" / "logs").glob("*.log"))]:
        if log.exists():
            tails.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
    return "\n".join(tails)


def assert_all_gone(pids: list[Any]) -> None:
    """Every one of ``pids`` ends within 10 s."""
    deadline = time.monotonic() + 10
    while any(alive(int(p)) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in pids if alive(int(p))] == []


def run_mbx(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``mbx <args>`` from another terminal, which must succeed; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "workers", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@contextmanager
def mbx_up(
    tmp_path: Path, *args: str, **env_vars: str
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, object], dict[str, str]]]:
    """Run `mbx up` as a user would (no MBX_* variables but those given); kill it if the test fails.
    Without ``--dashboard-port`` in ``args`` the dashboard is left out (its default port may be taken)."""
    if "--dashboard-port" not in args:
        args = (*args, "--no-dashboard")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MBX_")}
    env.update({"MBX_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200", **env_vars})
    with (tmp_path / "up.log").open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "workers", "up", *args], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield up, wait_for(tmp_path / "data" / "stack.json", up, timeout=120, home=tmp_path), env
        finally:
            if up.poll() is None:
                up.kill()
                up.wait(10)


def test_up_runs_the_system_submit_fills_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    """The README's `make run` flow: up (the dashboard too), submit 10 AAPL from another
    terminal, Ctrl-C."""
    nats_port, pg_port, web_port = free_port(), free_port(), free_port()
    ports = ("--nats-port", str(nats_port), "--pg-port", str(pg_port), "--dashboard-port", str(web_port))
    with mbx_up(tmp_path, *ports) as (up, stack, env):
        assert stack["nats_url"] == f"nats://127.0.0.1:{nats_port}"
        pids = [*dict(stack["workers"]).values(), *dict(stack["servers"]).values()]  # type: ignore[call-overload]
        assert len(pids) == 11  # router, five executors, aggregator, parents, dashboard, nats-server, postgres
        announced = f"Dashboard: http://localhost:{web_port}"
        deadline = time.monotonic() + 30  # the stack file is written just before the announcement
        while announced not in " ".join((tmp_path / "up.log").read_text().split()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert announced in " ".join((tmp_path / "up.log").read_text().split())
        assert dashboard.healthy(web_port)

        submit = run_mbx(env, "submit", "--symbol", "AAPL", "--quantity", "10")
        assert "routed to alpaca" in submit.stdout
        assert "filled at alpaca 10 @" in submit.stdout
        status = run_mbx(env, "status")
        assert f"nats://127.0.0.1:{nats_port}: reachable" in status.stdout  # found through the stack file
        assert "executor-schwab" in status.stdout

        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    assert_all_gone(pids)
    assert not (tmp_path / "data" / "stack.json").exists()
    assert "nothing is left running" in (tmp_path / "up.log").read_text()


def free_cluster_port() -> int:
    """A client port P with P..P+2, their routes (+2000) and monitoring (+4000) all free."""
    return free_port(offsets=[offset + i for offset in (0, 2000, 4000) for i in range(3)])


def test_up_with_a_cluster_and_replicas_fills_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    """`mbx up --cluster 3 --replicas 2`: three nats-servers, two of every worker, an order
    fills, and Ctrl-C stops all of it."""
    nats_port = free_cluster_port()
    with mbx_up(
        tmp_path, "--cluster", "3", "--replicas", "2", "--nats-port", str(nats_port), "--pg-port", str(free_port())
    ) as (up, stack, env):
        assert stack["nats_url"] == ",".join(f"nats://127.0.0.1:{nats_port + i}" for i in range(3))
        workers, servers = dict(stack["workers"]), dict(stack["servers"])  # type: ignore[call-overload]
        assert sorted(servers) == ["nats-n1", "nats-n2", "nats-n3", "postgres"]
        assert (
            len(workers) == 16
            and {"router-1", "router-2", "aggregator-2", "parents-2", "executor-ibkr-1"} <= workers.keys()
        )
        pids = [*workers.values(), *servers.values()]
        submit = run_mbx(env, "submit", "--symbol", "AAPL", "--quantity", "10")
        assert "filled at alpaca 10 @" in submit.stdout
        conf = (tmp_path / "data" / "nats-cluster" / "n2" / "nats-server.conf").read_text()
        assert f"127.0.0.1:{nats_port + 2001}" in conf and f"127.0.0.1:{nats_port + 4001}" in conf
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    assert_all_gone(pids)


def test_up_secure_runs_every_worker_as_its_role_and_refuses_strangers(tmp_path: Path) -> None:
    """`mbx up --secure`: users, permissions and TLS are made, every worker connects as its
    role, an order fills through the CLI (the operator's credentials, from the stack file), and
    a connection without the CA or credentials gets nothing."""
    import asyncio

    import nats

    nats_port = free_port()
    ports = ("--nats-port", str(nats_port), "--pg-port", str(free_port()), "--metrics-port", "0")
    with mbx_up(tmp_path, "--secure", *ports) as (up, stack, env):
        access = dict(stack["nats_access"])  # type: ignore[call-overload]
        assert access["nats_user"] == "operator"
        security = tmp_path / "data" / "security"
        assert (security / "nats-auth.conf").stat().st_mode & 0o077 == 0
        submit = run_mbx(env, "submit", "--symbol", "AAPL", "--quantity", "10")
        assert "filled at alpaca 10 @" in submit.stdout
        logs = tmp_path / "data" / "logs"
        assert "NATS refused" not in "".join(p.read_text() for p in logs.glob("*.log"))

        async def stranger() -> str:
            try:
                nc = await nats.connect(f"nats://127.0.0.1:{nats_port}", allow_reconnect=False, connect_timeout=3)
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
            await nc.close()
            return "connected"

        assert "CERTIFICATE_VERIFY_FAILED" in asyncio.run(stranger())
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0


def test_up_uses_external_servers_when_urls_are_set(tmp_path: Path, servers: Any) -> None:
    """With MBX_NATS_URL and MBX_DATABASE_URL set, mbx up starts only the workers; `mbx down`
    from another terminal stops it."""
    with mbx_up(tmp_path, MBX_NATS_URL=servers.nats_url, MBX_DATABASE_URL=servers.database_url) as (up, stack, env):
        assert stack["servers"] == {}
        assert stack["nats_url"] == servers.nats_url
        assert len(dict(stack["workers"])) == 8  # type: ignore[call-overload]
        assert not (tmp_path / "data" / "nats").exists()
        assert not (tmp_path / "data" / "postgres").exists()
        run_mbx(env, "down", timeout=90)
        assert up.wait(60) == 0


async def test_mbx_down_with_a_backlog_stops_within_ten_seconds_and_loses_nothing(
    tmp_path: Path, servers: Any, isolated: Any
) -> None:
    """Alpaca limited to 2 requests a minute, 20 intents queued behind its rate budget: `mbx down`
    stops everything within 10 s, and every intent is either filled or still waiting in the
    streams to be handled (nothing was acked without being done)."""
    import asyncio

    import nats

    from tests.builders import intent_payload
    from tests.conftest import fetch_all
    from workers.platform.db.engine import make_engine

    config = tmp_path / "slow.yaml"
    config.write_text("brokers:\n  alpaca:\n    rate_limit: {requests: 2, per_seconds: 60}\n")
    env_vars = {
        "MBX_NATS_URL": servers.nats_url,
        "MBX_DATABASE_URL": isolated.database_url,
        "MBX_SUBJECT_PREFIX": isolated.subject_prefix,
        "MBX_CONFIG_FILE": str(config),
    }
    with mbx_up(tmp_path, **env_vars) as (up, _stack, env):
        nc = await nats.connect(servers.nats_url)
        try:
            js = nc.jetstream()
            for _ in range(20):
                payload = intent_payload(broker="alpaca")
                await js.publish(
                    isolated.subjects.intent("strat1"),
                    json.dumps(payload).encode(),
                    headers={"Nats-Msg-Id": payload["intent_id"]},
                )
            routes = isolated.subjects.stream_name("ROUTES")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                info = await js.consumer_info(routes, "executor-alpaca")
                if info.num_ack_pending >= 5:  # the executor holds routes waiting for tokens
                    break
                await asyncio.sleep(0.2)
            started = time.monotonic()
            down = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "workers", "down", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            out, _ = await asyncio.wait_for(down.communicate(), 60)
            took = time.monotonic() - started
            assert down.returncode == 0, out.decode()
            assert up.wait(10) == 0
            assert took < 10, f"mbx down took {took:.1f}s"
            executor = await js.consumer_info(routes, "executor-alpaca")
            router = await js.consumer_info(isolated.subjects.stream_name("ORDERS"), "router")
            unrouted = router.num_pending + router.num_ack_pending
            unplaced = executor.num_pending + executor.num_ack_pending
            db = make_engine(isolated.database_url, pool_size=1)
            try:
                rows = await fetch_all(db, "SELECT status FROM orders WHERE broker_name = 'alpaca'")
            finally:
                await db.dispose()
            done = sum(1 for r in rows if r["status"] == "filled")
            assert unplaced > 0
            assert done + unplaced + unrouted == 20, (done, unplaced, unrouted)
        finally:
            await nc.close()
