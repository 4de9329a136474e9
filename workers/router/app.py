"""Composition root of the router worker, and its live-config and exposure watchers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from contracts import BrokerStatus, FillQuality
from workers.domain.config import MbxConfig, config_to_json
from workers.domain.keys import CONFIG_KEY, CONFIG_STATUS_KEY, EXPOSURE_KEY
from workers.domain.quotes import QuoteSource
from workers.platform.bus import open_bucket, read_bucket, read_history
from workers.platform.live_config import CONFIG_HISTORY
from workers.platform.runtime import Worker
from workers.platform.settings import Settings
from workers.router.approvals import EXPIRY_EVERY_S
from workers.router.backlog import READ_EVERY_S
from workers.router.handlers import RouterHandlers
from workers.router.state import RouterState

log = structlog.get_logger("mbx.router")

WATCH_STARTUP_TIMEOUT = 5.0
BUS_PROBE_S = 1.0
"""Seconds between two looks at the bus the heartbeats travel on (``probe_bus``)."""
BUS_PROBE_TIMEOUT_S = 1.0
"""Seconds one look may take before it counts as trouble."""


class RouterWorker(Worker):
    """The router: decisions from live state kept current by KV watches."""

    def __init__(self, settings: Settings, seed_config: MbxConfig, quotes: QuoteSource) -> None:
        super().__init__("router", settings)
        self.seed_config = seed_config
        self.state = RouterState(seed_config)
        self.handlers = RouterHandlers(self, self.state, quotes)
        self._watchers: list[Any] = []
        self._watch_tasks: list[asyncio.Task[None]] = []
        self._preview_sub: Any = None
        self._split_sub: Any = None
        self._refused = False

    async def prepare(self) -> None:
        subjects = self.subjects
        self.config_kv = await open_bucket(self.js, subjects.config_bucket, history=CONFIG_HISTORY)
        # The YAML config seeds an empty bucket; afterwards the bucket is the source of truth.
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self.config_kv.create(CONFIG_KEY, config_to_json(self.seed_config))
        self.connection_changed()  # just connected: every broker is starting until it speaks
        await self._follow_live_state()
        self._preview_sub = await self.broker.connection.subscribe(
            subjects.route_preview, queue="router", cb=self.handlers.preview
        )
        self._split_sub = await self.broker.connection.subscribe(
            subjects.route_split, queue="router", cb=self.handlers.parents.answer_split
        )
        try:
            await self.handlers.read_backlog()  # what the executors have queued already
        except Exception as exc:  # noqa: BLE001  (read again in a moment)
            log.warning("backlog reading failed", error=f"{type(exc).__name__}: {exc}")
        self.every(READ_EVERY_S, self.handlers.read_backlog, "backlog reading")
        self.every(BUS_PROBE_S, self.probe_bus, "bus probe")
        self.every(EXPIRY_EVERY_S, self.handlers.approvals.sweep, "approval expiry")
        log.info("router state loaded", config_version=self.state.version, exposure=self.state.snapshot is not None)

    def connection_changed(self) -> None:
        """From the moment NATS drops (and again when it is back), every broker not heard from
        since is starting: an intent delivered before the live state is reloaded waits for the
        brokers' heartbeats instead of finding them all stale."""
        config = self.state.config
        if not self.broker.connection.is_connected:  # dropped: heartbeats stale since are unsure
            self.state.registry.bus_trouble()
        self.state.registry.begin_grace(config.routing.startup_grace_s, config.enabled_brokers())

    async def probe_bus(self) -> None:
        """Tell a broker's trouble from the bus's: the heartbeat bucket's stream is asked for its
        state (answered by its leader, so it fails while the stream elects one), and a broker
        whose heartbeat looks stale is read from the bucket directly (the watch may be what
        lags). A failure is bus trouble: heartbeats stale since are *unsure*, not down."""
        registry = self.state.registry
        try:
            async with asyncio.timeout(BUS_PROBE_TIMEOUT_S):
                info = await self.js.stream_info(f"KV_{self.subjects.status_bucket}")
                if info.cluster is not None and not info.cluster.leader:
                    raise RuntimeError("the heartbeat bucket has no leader")
                quiet = [b for b in self.state.config.enabled_brokers() if not registry.health(b).up]
                if quiet:
                    status_kv = await self.js.key_value(self.subjects.status_bucket)
                    for broker in quiet:
                        with contextlib.suppress(KeyNotFoundError):
                            await self._apply_status((await status_kv.get(str(broker))).value or b"", 0)
        except Exception as exc:  # noqa: BLE001  (any failure to read the bus is the bus's trouble)
            registry.bus_trouble()
            log.debug("bus probe failed", error=f"{type(exc).__name__}: {exc}")

    async def reconnected(self) -> None:
        """NATS came back (perhaps a restarted server, which forgets its latest writes and
        whose old watches are gone): read the live state again and watch it anew (brokers not
        heard from since are starting from ``connection_changed``)."""
        await self._stop_watches()
        await self._follow_live_state()
        log.info("router state reloaded after reconnect", starting=sorted(self.state.registry.starting()))

    async def _follow_live_state(self) -> None:
        """Load config, exposure, broker health and fill quality, then watch them."""
        subjects = self.subjects
        exposure_kv = await open_bucket(self.js, subjects.exposure_bucket)
        status_kv = await open_bucket(self.js, subjects.status_bucket)
        quality_kv = await open_bucket(self.js, subjects.fill_quality_bucket)
        await self._load_config()
        await self._load(exposure_kv, EXPOSURE_KEY, self._apply_exposure)
        # Broker health and fill quality are read in full before the first decision; the watches
        # below keep them current (their own start-up marker cannot be trusted under load).
        for _, value in await read_bucket(self.js, subjects.status_bucket):
            await self._apply_status(value, 0)
        for _, value in await read_bucket(self.js, subjects.fill_quality_bucket):
            await self._apply_fill_quality(value, 0)
        approvals_kv = await self.handlers.approvals.bucket()
        watches = (
            (self.config_kv, CONFIG_KEY, self._apply_config),
            (exposure_kv, EXPOSURE_KEY, self._apply_exposure),
            (status_kv, ">", self._apply_status),
            (quality_kv, ">", self._apply_fill_quality),
            (approvals_kv, ">", self.handlers.approvals.on_change),
        )
        caught_up = [asyncio.Event() for _ in watches]
        for (kv, key, apply), ready in zip(watches, caught_up, strict=True):
            self._watch_tasks.append(asyncio.create_task(self._watch(kv, key, apply, ready)))
        # Also wait for the watches' own start (bounded: the values are loaded above already).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in caught_up)), WATCH_STARTUP_TIMEOUT)

    async def _stop_watches(self) -> None:
        for watcher in self._watchers:
            with contextlib.suppress(Exception):
                await watcher.stop()
        self._watchers.clear()
        for task in self._watch_tasks:
            task.cancel()
        await asyncio.gather(*self._watch_tasks, return_exceptions=True)
        self._watch_tasks.clear()

    async def cleanup(self) -> None:
        await self._stop_watches()
        await self.handlers.approvals.stop()
        for sub in (self._preview_sub, self._split_sub):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _load_config(self) -> None:
        """Start from the newest valid config revision (the latest may have been refused)."""
        history = await read_history(self.js, self.subjects.config_bucket, CONFIG_KEY)
        for revision, value in reversed(history):
            if self.state.apply_config(value, revision) is None:
                return

    async def _load(self, kv: KeyValue, key: str, apply: Callable[[bytes, int], Any]) -> None:
        with contextlib.suppress(KeyNotFoundError):
            entry = await kv.get(key)
            if entry.value is not None:
                await apply(entry.value, entry.revision or 0)

    async def _watch(
        self, kv: KeyValue, key: str, apply: Callable[[bytes, int], Any], caught_up: asyncio.Event
    ) -> None:
        """Apply every change of ``key``; re-create the watch with backoff if it breaks.

        ``caught_up`` is set once the values present at start have been applied.
        """
        delay = 0.5
        while not self.stopping.is_set():
            try:
                watcher = await kv.watch(key)
                self._watchers.append(watcher)
                async for entry in watcher:
                    if entry is None:  # the end of the initial values
                        caught_up.set()
                    else:
                        # A deleted or purged key arrives with an operation and no value.
                        value = entry.value if entry.operation is None else b""
                        await apply(value or b"", entry.revision or 0)
                    delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  (the watch broke, e.g. a reconnect: start again)
                self.state.registry.bus_trouble()
                log.warning("kv watch failed, retrying", key=key, error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _apply_config(self, raw: bytes, revision: int) -> None:
        if revision and revision <= self.state.version:
            return
        if not raw:
            log.warning("routing config key deleted; keeping the current config", config_version=self.state.version)
            return
        error = self.state.apply_config(raw, revision)
        if error is None:
            log.info("routing config applied", config_version=revision)
            if self._refused:  # the refusal on record is history now
                with contextlib.suppress(Exception):
                    await self.config_kv.put(CONFIG_STATUS_KEY, b"")
                self._refused = False
            return
        self._refused = True
        # Refused: the previous config stays; say why where operators and tools can see it.
        log.warning("routing config refused", revision=revision, error=error, config_version=self.state.version)
        with contextlib.suppress(Exception):
            await self.config_kv.put(CONFIG_STATUS_KEY, error.encode())

    async def _apply_status(self, raw: bytes, _revision: int) -> None:
        if raw:
            try:
                self.state.registry.update(BrokerStatus.model_validate_json(raw))
            except ValidationError as exc:
                log.warning("broker status refused", errors=exc.error_count())

    async def _apply_fill_quality(self, raw: bytes, _revision: int) -> None:
        if raw:
            try:
                self.state.apply_fill_quality(FillQuality.model_validate_json(raw))
            except ValidationError as exc:
                log.warning("fill quality refused", errors=exc.error_count())

    async def _apply_exposure(self, raw: bytes, _revision: int) -> None:
        if not raw:
            self.state.clear_exposure()
            return
        error = self.state.apply_exposure(raw)
        if error is not None:
            log.warning("exposure snapshot refused", error=error)


def build_router(settings: Settings, config: MbxConfig, quotes: QuoteSource) -> RouterWorker:
    """The router, pricing orders from ``quotes`` (the source ``market_data.source`` names)."""
    worker = RouterWorker(settings, config, quotes)
    # Overlapping: an intent held for a starting broker must not hold back the ones behind it.
    worker.subscribe(
        worker.handlers.intent_spec,
        worker.handlers.on_intent,
        batch_size=64,
        overlapping=True,
        arrange=worker.handlers.scarcest_first,
    )
    worker.subscribe(worker.handlers.failover_spec, worker.handlers.on_failover, batch_size=16, overlapping=True)
    worker.subscribe(worker.handlers.cancel_spec, worker.handlers.on_cancel, batch_size=16)
    return worker
