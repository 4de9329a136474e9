"""`mbx dashboard` serves the page for a running stack, as the dashboard role, until stopped;
a port in use is refused with a sentence."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import pytest

from tests.conftest import eventually
from tests.integration.test_cli import mbx
from tests.servers import Servers
from workers.devstack import dashboard
from workers.devstack.processes import free_port

pytestmark = pytest.mark.integration


async def test_mbx_dashboard_serves_until_interrupted(servers: Servers) -> None:
    port = free_port()
    env = {**os.environ, "MBX_NATS_URL": servers.nats_url, "MBX_DATABASE_URL": servers.database_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers", "dashboard", "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        await eventually(lambda: asyncio.to_thread(dashboard.healthy, port), timeout=60, interval=0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert f"dashboard: http://localhost:{port}" in out.decode()
    assert proc.returncode == 0
    assert not dashboard.healthy(port)


async def test_a_port_in_use_is_refused(servers: Servers) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = await mbx("dashboard", "--port", str(port), env={"MBX_NATS_URL": servers.nats_url})
    assert code == 2
    assert f"port {port} is in use" in " ".join(out.split())
