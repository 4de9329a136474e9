"""A broker's bad day costs no order, on a real server, one condition at a time: a 429 whose
reset is far away fails the route over at once; a route that may have reached its broker never
fails over and is never dead-lettered, whatever its deliveries, until the broker shows it."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from contracts import BrokerName, FailoverEvent
from tests.builders import make_route
from tests.conftest import eventually, stream_messages
from workers.domain.venue import OpenGate, VenueAmbiguous, VenueRateLimited, VenueUnavailable
from workers.executor.app import build_executor
from workers.platform.bus import publish
from workers.platform.settings import Settings
from workers.venues.simulated.venue import SimulatedVenue

pytestmark = pytest.mark.integration


class WindowEndVenue(SimulatedVenue):
    """Every placement is answered 429 with a reset at the end of a 60 s window (58 s away)."""

    def __init__(self) -> None:
        super().__init__(BrokerName.ALPACA)
        self.attempts = 0

    async def place_order(self, intent: Any, client_order_id: str) -> Any:
        self.attempts += 1
        raise VenueRateLimited("alpaca: 429 too many requests (POST /v2/orders)", retry_after=58.0)


class LostThenThrottledVenue(SimulatedVenue):
    """The first placement's answer is lost; every later one is refused with a short 429, and
    lookups fail (the broker is unreachable) for a while, then miss, until ``appear``."""

    def __init__(self, failing_lookups: int) -> None:
        super().__init__(BrokerName.ALPACA)
        self.attempts = 0
        self.failing_lookups = failing_lookups
        self.appeared: Any = None

    async def place_order(self, intent: Any, client_order_id: str) -> Any:
        self.attempts += 1
        if self.attempts == 1:
            raise VenueAmbiguous("alpaca: POST /v2/orders was sent but got no answer (ReadTimeout)")
        raise VenueRateLimited("alpaca: 429 too many requests (POST /v2/orders)", retry_after=0.2)

    async def locate(self, intent: Any, client_order_id: str, since: Any, exclude: Any = frozenset()) -> Any:
        if self.failing_lookups > 0:
            self.failing_lookups -= 1
            raise VenueUnavailable("alpaca: 503 from GET /v2/orders:by_client_order_id")
        return self.appeared

    async def appear(self, intent: Any) -> None:
        """The broker shows the order (placed in its book directly, as the lost request did)."""
        self.use_gate(OpenGate())
        self.appeared = await super().place_order(intent, intent.intent_id)


async def _failovers(nc: NatsClient, settings: Settings, intent_id: str) -> list[str]:
    subject = settings.subjects.failover(BrokerName.ALPACA)
    return [
        e for e in await stream_messages(nc, settings.subjects.stream_name("EXECUTIONS"), subject) if intent_id in e
    ]


async def test_a_429_until_the_end_of_the_window_fails_the_route_over_at_once(
    isolated: Settings, nc: NatsClient
) -> None:
    """The reset is 58 s away, past routing.max_queue_wait_s (2 s), and the request never reached
    the broker: the route goes back to the router at once, reason rate_limited, after a single
    placement; it is not retried at 0.5-4 s nor dead-lettered."""
    venue = WindowEndVenue()
    worker = build_executor(isolated, BrokerName.ALPACA, venue)
    await worker.start()
    try:
        route = make_route(broker=BrokerName.ALPACA, fallback_chain=(BrokerName.IBKR,))
        await publish(
            worker.js, isolated.subjects.route(BrokerName.ALPACA, route.strategy_id), route, intent_id=route.intent_id
        )
        [raw] = await eventually(lambda: _failovers(nc, isolated, route.intent_id), timeout=20)
    finally:
        await worker.stop()
    event = FailoverEvent.model_validate_json(raw)
    assert event.reason_code == "rate_limited"
    assert "past routing.max_queue_wait_s (2s)" in event.reason
    assert venue.attempts == 1
    dead = await stream_messages(nc, isolated.subjects.stream_name("DLQ"), f"{isolated.subject_prefix}.dlq.>")
    assert not [d for d in dead if route.intent_id in d]


async def test_a_route_whose_first_answer_was_lost_never_fails_over_nor_dead_letters(
    isolated: Settings, nc: NatsClient
) -> None:
    """After an ambiguous POST, later 429s and unreachable lookups are waited out, uncounted,
    past the five-delivery limit, with no failover (the first order may exist); when the broker
    shows the order it is reported filled."""
    venue = LostThenThrottledVenue(failing_lookups=3)
    worker = build_executor(isolated, BrokerName.ALPACA, venue)
    await worker.start()
    limit = isolated.topology.executor_consumer(BrokerName.ALPACA).give_up_after
    try:
        route = make_route(broker=BrokerName.ALPACA)
        await publish(
            worker.js, isolated.subjects.route(BrokerName.ALPACA, route.strategy_id), route, intent_id=route.intent_id
        )

        async def placed_past_the_limit() -> bool:
            return venue.attempts > limit

        await eventually(placed_past_the_limit, timeout=90, interval=0.2)
        assert await _failovers(nc, isolated, route.intent_id) == []
        await venue.appear(route.intent)
        subject = isolated.subjects.execution(BrokerName.ALPACA, "filled", route.strategy_id)

        async def filled() -> list[str]:
            found = await stream_messages(nc, isolated.subjects.stream_name("EXECUTIONS"), subject)
            return [e for e in found if route.intent_id in e]

        await eventually(filled, timeout=60)
    finally:
        await worker.stop()
    assert await _failovers(nc, isolated, route.intent_id) == []
    dead = await stream_messages(nc, isolated.subjects.stream_name("DLQ"), f"{isolated.subject_prefix}.dlq.>")
    assert not [d for d in dead if route.intent_id in d]
