"""Run one worker process until SIGINT or SIGTERM (``mbx worker ...``, compose services)."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog

from contracts import BrokerName
from workers.db.engine import make_engine
from workers.runtime import Worker
from workers.settings import MbxConfig, Settings

log = structlog.get_logger("mbx.entry")


def build_worker(kind: str, settings: Settings, config: MbxConfig, broker: BrokerName | None = None) -> Worker:
    """The composition root for each kind of worker."""
    if kind == "router":
        from workers.router.app import build_router  # noqa: PLC0415  (import only what runs)

        return build_router(settings, config)
    if kind == "executor":
        from workers.executor.app import build_simulated_executor  # noqa: PLC0415

        if broker is None:
            raise ValueError("an executor needs --broker")
        return build_simulated_executor(settings, broker, config=config)
    if kind == "aggregator":
        from workers.aggregator.app import build_aggregator  # noqa: PLC0415

        return build_aggregator(settings, make_engine(settings.sqlalchemy_url()))
    raise ValueError(f"unknown worker kind {kind!r}")


async def run_until_signalled(worker: Worker) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await _start_with_retry(worker, stopping)
    if not stopping.is_set():
        await stopping.wait()
    await worker.stop()


async def _start_with_retry(worker: Worker, stopping: asyncio.Event) -> None:
    """Keep trying to connect while NATS is not there yet (a compose start-up race)."""
    delay = 0.5
    while not stopping.is_set():
        try:
            await worker.start()
            return
        except (OSError, TimeoutError) as exc:
            log.warning("cannot start yet, retrying", worker=worker.name, error=str(exc), retry_in=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(delay * 2, 10.0)
