"""Serving the dashboard: Streamlit in a child process, on 127.0.0.1 unless told otherwise,
with the stack's NATS and the read-only ``mbx_dashboard`` database role, and a health endpoint
to wait on."""

from __future__ import annotations

import importlib.util
import os
import sys
import urllib.request
from pathlib import Path

HEALTH_PATH = "/_stcore/health"


def app_path() -> Path:
    """``dashboard/app.py`` of the installed package (found, not imported: no worker imports it)."""
    spec = importlib.util.find_spec("dashboard")
    if spec is None or spec.origin is None:
        raise RuntimeError("the dashboard package is not installed (run `make install`)")
    return Path(spec.origin).parent / "app.py"


def command(port: int, address: str = "127.0.0.1") -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_path()),
        "--server.headless=true",
        f"--server.address={address}",
        f"--server.port={port}",
        "--server.fileWatcherType=none",
        "--browser.gatherUsageStats=false",
        "--client.toolbarMode=minimal",
    ]


def environment(nats_url: str, database_url: str, prefix: str | None = None) -> dict[str, str]:
    env = {**os.environ, "MBX_NATS_URL": nats_url, "MBX_DATABASE_URL": database_url}
    if prefix:
        env["MBX_SUBJECT_PREFIX"] = prefix
    return env


def healthy(port: int, address: str = "127.0.0.1") -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}{HEALTH_PATH}", timeout=1) as reply:
            return bool(reply.read().strip() == b"ok")
    except OSError:
        return False


def url(port: int, address: str = "127.0.0.1") -> str:
    return f"http://{'localhost' if address in ('127.0.0.1', '0.0.0.0') else address}:{port}"  # noqa: S104
