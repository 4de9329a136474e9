"""The dashboard against the real test stack: the session's nats-server and PostgreSQL, the
workers in this event loop with orders flowing, and the page run by Streamlit's AppTest (on a
thread, so the workers keep running while a page runs) or served to a real browser."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import pytest
import streamlit as st
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine
from streamlit.testing.v1 import AppTest

from contracts import ExecutionReport, OrderStatus
from contracts.client import MbxClient
from tests.builders import CRYPTO, FRACTIONAL, OPTION, make_intent
from tests.conftest import Pipeline, eventually, fetch_all
from workers.domain.config import MbxConfig
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings, dashboard_database_url

PAPER_CASH = Decimal(250_000)
APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
ORDERS = (
    ("equity", {"symbol": "AAPL", "quantity": "10"}),
    ("crypto", CRYPTO),
    ("option", OPTION),
    ("fractional", FRACTIONAL | {"symbol": "MSFT"}),
    ("equity", {"symbol": "NVDA", "quantity": "3", "side": "sell", "position_effect": "open"}),  # a short
)


@dataclass
class Flow:
    """A stack of its own (subject prefix and database) with orders flowing through it."""

    settings: Settings
    pipeline: Pipeline
    nc: NatsClient
    db: AsyncEngine
    finals: dict[str, ExecutionReport] = field(default_factory=dict)

    async def submit(self, **overrides: Any) -> ExecutionReport:
        intent = make_intent(strategy_id="dash", **overrides)
        tracker = await MbxClient(self.nc, self.settings.subjects).submit_and_wait(intent, timeout=30)
        assert tracker.terminal is not None
        self.finals[intent.intent_id] = tracker.terminal
        return tracker.terminal

    async def submit_parent(self, until: tuple[str, ...] = ("filled",), **overrides: Any) -> dict[str, Any]:
        """Send a parent order (an intent with an ``execution`` block) and wait until its row in
        ``parent_orders`` has one of the statuses ``until``."""
        intent = make_intent(strategy_id="dash", **overrides)
        assert intent.execution is not None
        await MbxClient(self.nc, self.settings.subjects).submit(intent)

        async def stored() -> dict[str, Any] | None:
            rows = await fetch_all(
                self.db, "SELECT * FROM parent_orders WHERE parent_intent_id = :p", p=intent.intent_id
            )
            return dict(rows[0]) if rows and rows[0]["status"] in until else None

        row = await eventually(stored, timeout=30, interval=0.2)
        assert row["execution"] == intent.execution.model_dump(mode="json", exclude_none=True)
        return row

    def env(self) -> dict[str, str]:
        """What `mbx dashboard` gives the page: the stack's NATS, and the dashboard's own role."""
        assert self.settings.nats_url and self.settings.database_url
        return {
            "MBX_NATS_URL": self.settings.nats_url,
            "MBX_DATABASE_URL": dashboard_database_url(self.settings, self.settings.database_url),
            "MBX_SUBJECT_PREFIX": self.settings.subject_prefix,
        }


def paper_accounts(config: MbxConfig) -> MbxConfig:
    """Paper margin accounts of a realistic size (the pictures in the README come from this stack)."""
    brokers = {
        name: b.model_copy(update={"paper_cash": PAPER_CASH, "account_type": "margin"})
        for name, b in config.brokers.items()
    }
    return config.model_copy(update={"brokers": brokers})


@pytest.fixture
async def flow(
    isolated: Settings, start_pipeline: Callable[..., Awaitable[Pipeline]], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Flow]:
    pipeline = await start_pipeline(paper_accounts(MbxConfig()), own_settings=isolated)
    nc = await nats.connect(isolated.nats_url or "")
    db = make_engine(isolated.sqlalchemy_url(), pool_size=2)
    flowing = Flow(isolated, pipeline, nc, db)
    for _, order in ORDERS:
        report = await flowing.submit(**order)
        assert report.status is OrderStatus.FILLED, report
    for name, value in flowing.env().items():
        monkeypatch.setenv(name, value)
    yield flowing
    await nc.close()
    await db.dispose()


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    """Streamlit's caches are shared by every AppTest in this process: each test starts clean
    (releasing a cached backend closes its connections)."""
    yield
    st.cache_resource.clear()
    st.cache_data.clear()


async def run(at: AppTest) -> AppTest:
    """Run the page on a thread: the workers in this event loop answer it meanwhile."""
    result = await asyncio.to_thread(at.run)
    assert not result.exception, [e.value for e in result.exception]
    return result


async def open_app() -> AppTest:
    return await run(AppTest.from_file(str(APP), default_timeout=60))


def table(at: AppTest, column: str, *others: str) -> Any:
    """The first table on the page with these columns, as a pandas DataFrame."""
    for element in at.dataframe:
        frame = element.value
        if {column, *others} <= set(frame.columns):
            return frame
    raise AssertionError(f"no table with columns {[column, *others]}")


def texts(at: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in getattr(at, kind)]


@dataclass(frozen=True)
class Chart:
    spec: dict[str, Any]
    rows: list[dict[str, Any]]
    """Every row of every dataset the chart draws (Streamlit sends them beside the spec, in Arrow)."""


def charts(at: AppTest) -> list[Chart]:
    import pyarrow as pa

    out = []
    for element in at.get("vega_lite_chart"):
        rows = []
        for dataset in element.proto.datasets:
            rows += pa.ipc.open_stream(dataset.data.data).read_all().to_pylist()
        out.append(Chart(json.loads(element.proto.spec), rows))
    return out
