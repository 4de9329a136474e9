"""Composition of worker processes: which worker, with which adapters, until a signal stops it
(``mbx worker ...``, ``mbx up``, compose services, and the tests' in-process pipelines)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal

import structlog

from contracts import BrokerName
from workers.domain.config import MbxConfig
from workers.executor.app import ExecutorWorker, build_executor, rate_limit, request_timeout
from workers.platform.bus import BUS_UNAVAILABLE, JetStream
from workers.platform.runtime import Worker
from workers.platform.settings import Settings
from workers.venues.factory import VenueContext, build_quote_source, build_venue
from workers.venues.simulated.venue import SimulatedVenue

log = structlog.get_logger("mbx.entry")


def build_worker(kind: str, settings: Settings, config: MbxConfig, broker: BrokerName | None = None) -> Worker:
    """The composition root for each kind of worker."""
    if kind == "router":
        from workers.router.app import build_router  # noqa: PLC0415  (import only what runs)

        return build_router(settings, config, build_quote_source(config))
    if kind == "executor":
        if broker is None:
            raise ValueError("an executor needs --broker")
        return build_executor_worker(settings, broker, config=config)
    if kind == "aggregator":
        from workers.aggregator.app import build_aggregator  # noqa: PLC0415
        from workers.platform.db.engine import make_engine  # noqa: PLC0415

        return build_aggregator(settings, make_engine(settings.sqlalchemy_url()))
    if kind == "parents":
        from workers.parents.app import build_parents  # noqa: PLC0415

        return build_parents(settings)
    raise ValueError(f"unknown worker kind {kind!r}")


def build_executor_worker(
    settings: Settings,
    broker: BrokerName,
    simulated: SimulatedVenue | None = None,
    config: MbxConfig | None = None,
) -> ExecutorWorker:
    """An executor with the adapter the config names for ``broker`` (``simulated`` hands in a
    simulator set up by the caller)."""
    config = config or MbxConfig()
    hosts: list[ExecutorWorker] = []

    def js() -> JetStream:
        return hosts[0].js

    context = VenueContext(js, settings.topology, request_log=settings.sim_request_log)
    venue = build_venue(broker, config, context, simulated=simulated)
    worker = build_executor(settings, broker, venue, rate_limit(broker, config, venue.capabilities), config)
    worker.handlers.request_timeout = request_timeout(broker, config)
    hosts.append(worker)
    return worker


async def run_until_signalled(worker: Worker) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await _start_with_retry(worker, stopping)
    if not stopping.is_set():
        freeze_startup_heap()
        await stopping.wait()
    await worker.stop()


def freeze_startup_heap() -> None:
    """Keep what start-up built out of every later garbage collection.

    A worker process holds 90,000 to 155,000 objects once started, nearly all of them the
    modules, classes and functions it imported. Each full collection walked all of them: 100 to
    340 ms on the 2-core machine, during which the worker handled nothing, and a burst's
    allocations make full collections come every second or two for a while (the latency after
    a burst, docs/architecture.md). Frozen, they are never walked again; what the worker
    creates later is collected as before."""
    gc.collect()
    gc.freeze()


RETRY_START: tuple[type[Exception], ...] = (OSError, *BUS_UNAVAILABLE)


async def _start_with_retry(worker: Worker, stopping: asyncio.Event) -> None:
    """Keep trying to start while NATS is not there yet (a compose start-up race) or cannot
    answer yet (a cluster electing a stream's leader)."""
    delay = 0.5
    while not stopping.is_set():
        try:
            await worker.start()
            return
        except RETRY_START as exc:
            log.warning("cannot start yet, retrying", worker=worker.name, error=str(exc), retry_in=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(delay * 2, 10.0)
