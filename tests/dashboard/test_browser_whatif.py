"""The configuration tab's "preview this change on last week's orders" in a real browser (Debian's
Chromium driven by Playwright, as ``test_browser.py``), served as `mbx dashboard` serves it: the
preview runs `mbx whatif` from the served dashboard and shows its summary, and nothing is applied.
The page is saved as ``.artifacts/dashboard/whatif/preview.png``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.dashboard.browser import ARTIFACTS, chromium, page_at, served
from tests.dashboard.conftest import Flow
from workers.ops.config import read_live_config

pytestmark = pytest.mark.integration

SHOTS = ARTIFACTS / "whatif"


def preview_everything_stopped(browser_path: str, url: str, shot: Path) -> list[str]:
    """Tick "stop all trading" and preview it; returns the page errors seen."""
    from playwright.sync_api import expect

    with page_at(browser_path, url) as (page, errors):
        tab = page.get_by_role("tab", name="Configuration", exact=True)
        tab.click()
        expect(tab).to_have_attribute("aria-selected", "true")
        panel = page.locator("[data-testid=stTabPanel]:visible").first
        panel.get_by_text("stop all trading").click()
        panel.get_by_role("button", name="Preview on last week's orders").click()
        # The preview starts `mbx whatif` as a command: 60 s on a loaded 2-core machine.
        expect(panel.get_by_text("Preview, not applied")).to_be_visible(timeout=60_000)
        rejected = panel.locator("[data-testid=stMetric]").filter(has_text="would be rejected")
        expect(rejected.locator("[data-testid=stMetricValue]")).to_have_text("5")
        expect(panel.get_by_text("Would be rejected (5)")).to_be_visible()
        expect(page.locator("[data-testid=stException]")).to_have_count(0)
        page.screenshot(path=str(shot), full_page=True)
    return errors


async def test_a_previewed_kill_switch_shows_every_order_of_the_week_rejected_and_applies_nothing(
    flow: Flow,
) -> None:
    """Previewing "stop all trading" in the browser shows the week's five orders rejected, with no
    page error, and the live config keeps its revision."""
    browser_path = chromium()
    before = await read_live_config(flow.nc.jetstream(), flow.settings.subjects)
    shot = SHOTS / "preview.png"
    shot.unlink(missing_ok=True)
    async with served(flow.env(), SHOTS / "dashboard.log") as url:
        errors = await asyncio.to_thread(preview_everything_stopped, browser_path, url, shot)
    assert errors == []
    assert shot.stat().st_size > 0
    after = await read_live_config(flow.nc.jetstream(), flow.settings.subjects)
    assert after.revision == before.revision and after.config == before.config
