"""Session-wide real servers; per-test in-process workers (asyncio tasks, not processes)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import BrokerName, ExposureSnapshot
from tests.servers import Servers, session_servers
from workers.domain.capabilities import CAPABILITIES
from workers.domain.config import BrokerConfig, MbxConfig, RateLimitConfig
from workers.domain.keys import EXPOSURE_KEY
from workers.domain.quotes import QuoteSource
from workers.entry import build_executor_worker, build_worker
from workers.executor.app import rate_limit
from workers.platform.bus import ensure_streams, jetstream, read_stream
from workers.platform.db.engine import make_engine
from workers.platform.db.migrate import upgrade
from workers.platform.live_config import write_live_config
from workers.platform.runtime import Worker
from workers.platform.settings import Settings, to_sqlalchemy_url
from workers.router.app import build_router
from workers.venues.simulated.venue import SimulatedVenue

T = TypeVar("T")


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with session_servers(tmp_path_factory.mktemp("servers")) as found:
        upgrade(found.database_url)
        yield found


@pytest.fixture
def settings(servers: Servers, tmp_path: Path) -> Settings:
    return Settings(nats_url=servers.nats_url, database_url=servers.database_url, data_dir=tmp_path, config_file=None)


@pytest.fixture
async def nc(servers: Servers) -> AsyncIterator[NatsClient]:
    client = await nats.connect(servers.nats_url)
    yield client
    await client.close()


@pytest.fixture
def fresh_database(servers: Servers) -> Iterator[str]:
    """A scratch database on the session's server, dropped afterwards."""
    name = f"mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(to_sqlalchemy_url(servers.database_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(to_sqlalchemy_url(servers.database_url)).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
async def db(servers: Servers) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(servers.database_url, pool_size=2)
    yield engine
    await engine.dispose()


async def eventually(check: Callable[[], Awaitable[T]], *, timeout: float = 10.0, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail with the last value at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


async def fetch_all(db: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with db.connect() as conn:
        return list((await conn.execute(text(sql), params)).mappings().all())


async def stream_messages(nc: NatsClient, stream: str, subject: str) -> list[str]:
    """Every payload stored on ``subject`` (wildcards allowed)."""
    return [m.data.decode() for m in await read_stream(nc.jetstream(), stream, subject)]


async def reset_exposure(js: Any, subjects: Any) -> None:
    """No exposure snapshot: allocation limits off, as on a fresh deployment."""
    try:
        kv = await js.key_value(subjects.exposure_bucket)
    except BucketNotFoundError:
        return
    await kv.purge("current")


async def exposure_snapshot(js: Any, subjects: Any) -> ExposureSnapshot | None:
    """The aggregator's latest exposure snapshot (what the router routes by), if any."""
    try:
        entry = await (await js.key_value(subjects.exposure_bucket)).get(EXPOSURE_KEY)
    except (BucketNotFoundError, KeyNotFoundError):
        return None
    return ExposureSnapshot.model_validate_json(entry.value) if entry.value else None


async def exposure_where(
    js: Any, subjects: Any, check: Callable[[ExposureSnapshot], bool], timeout: float = 30.0
) -> ExposureSnapshot:
    """The first exposure snapshot for which ``check`` holds (a fill the router must see held)."""

    async def seen() -> ExposureSnapshot | None:
        snap = await exposure_snapshot(js, subjects)
        return snap if snap is not None and check(snap) else None

    return await eventually(seen, timeout=timeout)


UNTHROTTLED = RateLimitConfig(requests=1_000_000, per_seconds=1)
UNTHROTTLED_DAY = 1_000_000_000
"""Schwab's 4,000 order calls a day would end the test session's Schwab orders partway."""
TEST_CASH = Decimal(10**12)


def unthrottled(config: MbxConfig) -> MbxConfig:
    """Brokers without a configured rate limit (or daily order limit) get a very high one: the
    documented limits (Schwab's 120 a minute) would make most tests wait on the budget, not test anything. Paper
    accounts left at the default cash get ``TEST_CASH``: test flows buy far more than 100,000 USD."""
    default_cash = BrokerConfig().paper_cash
    brokers = {
        name: broker.model_copy(
            update={
                "rate_limit": broker.rate_limit or UNTHROTTLED,
                "orders_per_day": broker.orders_per_day
                or (UNTHROTTLED_DAY if CAPABILITIES[name].orders_per_day else None),
                "paper_cash": TEST_CASH if broker.paper_cash == default_cash else broker.paper_cash,
            }
        )
        for name, broker in config.brokers.items()
    }
    return config.model_copy(update={"brokers": brokers})


def simulated_venue(broker: BrokerName, config: MbxConfig) -> SimulatedVenue:
    """A simulated broker enforcing the limit its executor budgets for."""
    limit = rate_limit(broker, unthrottled(config))[0]  # the simulator plays the first window
    # Test flows buy far more than a paper account's 100,000 USD.
    return SimulatedVenue(broker, rate_limit=(limit.requests, limit.per_seconds), cash=TEST_CASH)


class Pipeline:
    """Router, one executor per broker, the aggregator and the parent-order worker, running in this event loop."""

    def __init__(
        self,
        settings: Settings,
        config: MbxConfig,
        venue_overrides: dict[BrokerName, SimulatedVenue] | None = None,
        executors: bool = True,
        quotes: QuoteSource | None = None,
    ) -> None:
        self.settings = settings
        self.config = config = unthrottled(config)
        self.venues = {b: simulated_venue(b, config) for b in BrokerName} | (venue_overrides or {})
        router = build_router(settings, config, quotes) if quotes else build_worker("router", settings, config)
        self.workers: list[Worker] = [router]
        if executors:
            self.workers += [
                build_executor_worker(settings, b, self.venues[b], config) for b in config.enabled_brokers()
            ]
        self.workers.append(build_worker("aggregator", settings, config))
        self.workers.append(build_worker("parents", settings, config))

    async def start(self) -> None:
        # The router reads its config from KV: put this pipeline's config there first, as an
        # operator would, so no earlier test's config leaks in.
        nc = await nats.connect(self.settings.nats_url or "")
        try:
            await ensure_streams(nc.jetstream(), self.settings.subjects)
            await write_live_config(jetstream(nc), self.settings.subjects, self.config)
            await reset_exposure(nc.jetstream(), self.settings.subjects)
        finally:
            await nc.close()
        for worker in self.workers:
            await worker.start()

    async def stop(self) -> None:
        await asyncio.gather(*(worker.stop() for worker in self.workers))


@pytest.fixture
async def start_pipeline(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[Pipeline]]]:
    started: list[Pipeline] = []

    async def start(
        config: MbxConfig | None = None,
        venue_overrides: dict[BrokerName, SimulatedVenue] | None = None,
        executors: bool = True,
        own_settings: Settings | None = None,
        quotes: QuoteSource | None = None,
    ) -> Pipeline:
        pipeline = Pipeline(own_settings or settings, config or MbxConfig(), venue_overrides, executors, quotes)
        await pipeline.start()
        started.append(pipeline)
        return pipeline

    yield start
    for pipeline in started:
        await pipeline.stop()


@pytest.fixture
async def pipeline(start_pipeline: Callable[..., Awaitable[Pipeline]]) -> Pipeline:
    return await start_pipeline()


@pytest.fixture
async def isolated(servers: Servers, settings: Settings) -> AsyncIterator[Settings]:
    """Settings with a subject prefix and a database of their own: streams, KV buckets (the
    simulated brokers' books too) and tables start empty, whatever earlier tests left."""
    name = f"t{uuid.uuid4().hex[:10]}"
    url = await new_database(servers, name)
    yield settings.model_copy(update={"database_url": url, "subject_prefix": name})


async def new_database(servers: Servers, name: str) -> str:
    """A new database on the session's PostgreSQL, migrated to head; its URL."""
    admin = make_engine(servers.database_url, pool_size=1)
    async with admin.connect() as conn:
        await (await conn.execution_options(isolation_level="AUTOCOMMIT")).execute(text(f"CREATE DATABASE {name}"))
    await admin.dispose()
    url = servers.database_url.rsplit("/", 1)[0] + f"/{name}"
    await asyncio.to_thread(upgrade, url)
    return url
