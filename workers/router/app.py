"""Composition root of the router worker."""

from __future__ import annotations

from workers.router.handlers import RouterHandlers
from workers.runtime import Worker
from workers.settings import MbxConfig, Settings
from workers.venues.simulated import QuoteModel


def build_router(settings: Settings, config: MbxConfig) -> Worker:
    worker = Worker("router", settings)
    spec = settings.subjects.router_consumer()
    # Paper trading: reference prices from the same quote model the simulated brokers fill at.
    handlers = RouterHandlers(worker, spec, config, QuoteModel())
    worker.subscribe(spec, handlers.on_intent, batch_size=64)
    return worker
