"""The approvals tab in a real browser (Debian's Chromium driven by Playwright, the dashboard
served as `mbx dashboard` serves it): an order held by an approval rule is approved with a click,
and it then fills, with the approval in the audit trail (``mbx explain``). The tab is saved as a
screenshot (``.artifacts/dashboard/approvals/``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import eventually
from tests.dashboard.browser import ARTIFACTS, chromium, page_at, served
from tests.dashboard.conftest import Flow
from tests.dashboard.test_approvals import RULES, final_status, hold_rules, submit_held
from tests.integration.test_cli import mbx

pytestmark = pytest.mark.integration

SHOTS = ARTIFACTS / "approvals"


def approve_in_browser(browser_path: str, url: str, intent_id: str, shot: Path) -> list[str]:
    """Open the Approvals tab, approve ``intent_id`` as carol with a note; returns the page errors seen."""
    from playwright.sync_api import expect

    with page_at(browser_path, url, height=1200) as (page, errors):
        tab = page.get_by_role("tab", name="Approvals", exact=True)
        tab.click()
        expect(tab).to_have_attribute("aria-selected", "true")
        panel = page.locator("[data-testid=stTabPanel]:visible").first
        form = panel.locator("[data-testid=stForm]").filter(has_text=intent_id)
        expect(form).to_be_visible()
        form.get_by_label("your name (for the audit trail)").fill("carol")
        form.get_by_label("note").fill("checked in the browser")
        page.screenshot(path=str(shot), full_page=True)
        form.get_by_role("button", name="Approve").click()
        expect(panel.get_by_text(f"{intent_id} approved by carol")).to_be_visible()
        expect(panel.get_by_text("nothing is held for approval")).to_be_visible()
        expect(page.locator("[data-testid=stException]")).to_have_count(0)
    return errors


async def test_an_order_held_for_approval_is_approved_in_the_browser_and_fills(flow: Flow) -> None:
    browser_path = chromium()
    await hold_rules(flow, RULES[1:])
    held = await submit_held(flow, symbol="AAPL", quantity="120")
    assert held.rule == "dash-large"
    async with served(flow.env(), SHOTS / "dashboard.log") as url:
        errors = await asyncio.to_thread(approve_in_browser, browser_path, url, held.intent_id, SHOTS / "approvals.png")
    assert errors == []
    assert await eventually(lambda: final_status(flow, held.intent_id), timeout=30) == ("filled", "")

    env = {
        "MBX_NATS_URL": flow.settings.nats_url or "",
        "MBX_DATABASE_URL": flow.settings.database_url or "",
        "MBX_SUBJECT_PREFIX": flow.settings.subject_prefix,
    }

    async def explained() -> str:
        code, out = await mbx("explain", held.intent_id, env=env)
        flat = " ".join(out.split())
        return flat if code == 0 and "released to routing" in flat else ""

    story = await eventually(explained, timeout=30, interval=0.5)
    assert "held for approval at" in story and "by rule dash-large" in story
    assert "approved by carol at" in story and "(1 of 1): checked in the browser" in story
    assert "attempt 1: routed to" in story and "filled" in story
