"""Composition root of the router worker."""

from __future__ import annotations

from workers.router.handlers import RouterHandlers
from workers.runtime import Worker
from workers.settings import MbxConfig, Settings
from workers.venues.simulated import QuoteModel


def build_router(settings: Settings, config: MbxConfig) -> Worker:
    worker = Worker("router", settings)
    # Paper trading: reference prices from the same quote model the simulated brokers fill at.
    handlers = RouterHandlers(worker, config, QuoteModel())
    worker.subscribe(settings.subjects.router_consumer(), handlers.on_intent, batch_size=64)
    worker.subscribe(settings.subjects.router_failover_consumer(), handlers.on_failover, batch_size=16)
    return worker
