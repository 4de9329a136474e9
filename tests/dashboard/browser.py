"""What the dashboard's browser tests share: Debian's Chromium (never a downloaded browser), the
dashboard served as `mbx dashboard` serves it, and a page that collects its errors."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from workers.devstack import dashboard
from workers.devstack.processes import free_port, spawn, stop, wait_until

ARTIFACTS = Path(os.environ.get("MBX_ARTIFACTS_DIR", Path(__file__).resolve().parents[2] / ".artifacts")) / "dashboard"
TIMEOUT_MS = 30_000
"""Playwright's wait for an element: 30 s on a loaded 2-core CI machine (its default is 5 s)."""


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        message = "Chromium is not installed: `make browser` installs Debian's package with apt"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI the browser tests always run
        pytest.skip(message)
    return found


@asynccontextmanager
async def served(env: dict[str, str], log: Path) -> AsyncIterator[str]:
    """The dashboard served on a free port for a stack (``env``: its MBX_* variables); its URL
    once it answers. It logs to ``log``, made afresh."""
    await asyncio.to_thread(_fresh, log)
    port = free_port()
    server = spawn(dashboard.command(port), log, env={**os.environ, **env})
    try:
        await asyncio.to_thread(
            wait_until, lambda: dashboard.healthy(port), timeout=60, what="the dashboard", proc=server, log_file=log
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


def _fresh(log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)


@contextmanager
def page_at(
    browser_path: str, url: str, width: int = 1400, height: int = 1700, console: bool = False, **options: Any
) -> Iterator[tuple[Any, list[str]]]:
    """A Chromium page opened at ``url`` and the page errors it sees (filled as they come;
    ``console``: the console's errors too)."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, **options)
            page.set_default_timeout(TIMEOUT_MS)
            page.on("pageerror", lambda error: errors.append(str(error)))
            if console:
                page.on("console", lambda message: errors.extend([message.text] if message.type == "error" else []))
            page.goto(url)
            yield page, errors
        finally:
            browser.close()
