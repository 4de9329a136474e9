"""The best-execution report in a real browser (Debian's Chromium through Playwright): the HTML
page `mbx report execution --format html` writes for a month of real orders opens from a file
with its tables and brokers and no page error, and the dashboard's Execution tab shows the same
month with its charts and hands out the same page. Screenshots go to
``.artifacts/dashboard/execution/`` (a folder of their own: the other browser test counts the
pictures in ``.artifacts/dashboard/``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import fetch_all
from tests.dashboard.browser import ARTIFACTS, chromium, page_at, served
from tests.dashboard.conftest import Flow
from workers.cli.main import app

pytestmark = pytest.mark.integration

SHOTS = ARTIFACTS / "execution"
TABLES = ["Execution quality", "Routing by broker", "Routing by broker and rule"]


def read_report(browser_path: str, report: Path, shot: Path) -> tuple[list[str], list[list[str]], list[str]]:
    """Open the report from its file: its table titles, each table's first column, page errors."""
    from playwright.sync_api import expect

    with page_at(browser_path, report.as_uri(), width=1800, height=900, console=True) as (page, errors):
        expect(page.locator("h1")).to_contain_text("Best-execution report")
        tables = page.locator("table")
        expect(tables).to_have_count(len(TABLES))
        titles = page.locator("h2").all_inner_texts()
        first_columns = [t.locator("tbody tr td:first-child").all_inner_texts() for t in tables.all()]
        page.screenshot(path=str(shot), full_page=True)
    return titles, first_columns, errors


def click_execution_tab(browser_path: str, url: str, shot: Path, downloads: Path) -> tuple[str, list[str]]:
    """Open the Execution tab; returns the HTML report it hands out and the page errors seen."""
    from playwright.sync_api import expect

    with page_at(browser_path, url, height=2200, accept_downloads=True) as (page, errors):
        tab = page.get_by_role("tab", name="Execution", exact=True)
        tab.click()
        expect(tab).to_have_attribute("aria-selected", "true")
        panel = page.locator("[data-testid=stTabPanel]:visible").first
        expect(panel.locator("[data-testid=stDataFrame]")).to_have_count(len(TABLES))
        expect(panel.locator("[data-testid=stVegaLiteChart]")).to_have_count(3)
        for title in TABLES:
            expect(panel.get_by_text(title, exact=True)).to_be_visible()
        button = panel.get_by_role("button", name="Download the HTML report")
        with page.expect_download() as download:
            button.click()
        saved = downloads / download.value.suggested_filename
        download.value.save_as(saved)
        page.wait_for_timeout(1500)  # charts finish drawing
        expect(page.locator("[data-testid=stException]")).to_have_count(0)
        page.screenshot(path=str(shot), full_page=True)
    return saved.read_text(encoding="utf-8"), errors


async def test_the_html_report_opens_in_a_browser_and_the_execution_tab_hands_it_out(
    flow: Flow, tmp_path: Path
) -> None:
    """The CLI's HTML page shows its three tables with this month's brokers and no page error;
    the served Execution tab draws its tables and charts and downloads the very same page."""
    browser_path = chromium()
    month = f"{datetime.now(UTC):%Y-%m}"
    brokers = sorted(
        {
            r["broker_name"]
            for r in await fetch_all(flow.db, "SELECT broker_name FROM orders WHERE strategy_id = 'dash'")
        }
    )
    assert len(brokers) >= 3
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()

    report = tmp_path / "report.html"
    env = {"MBX_DATABASE_URL": flow.settings.database_url or "", "COLUMNS": "200"}
    args = ["report", "execution", "--month", month, "--format", "html", "--out", str(report)]
    result = await asyncio.to_thread(CliRunner().invoke, app, args, env=env)
    assert result.exit_code == 0, result.output

    titles, first_columns, errors = await asyncio.to_thread(
        read_report, browser_path, report, SHOTS / "1-html-report.png"
    )
    assert errors == []
    assert titles == TABLES
    quality, by_broker, by_rule = first_columns
    assert sorted(set(quality) - {"all"}) == brokers and quality[-1] == "all"
    assert by_broker == brokers and sorted(set(by_rule)) == brokers

    async with served(flow.env(), SHOTS / "dashboard.log") as url:
        handed_out, errors = await asyncio.to_thread(
            click_execution_tab, browser_path, url, SHOTS / "2-execution-tab.png", tmp_path
        )
    assert errors == []
    assert handed_out == report.read_text(encoding="utf-8")
    assert sorted(p.name for p in SHOTS.glob("*.png")) == ["1-html-report.png", "2-execution-tab.png"]
