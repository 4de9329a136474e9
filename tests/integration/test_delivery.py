"""Delivery guarantees on a real server: idempotent persistence, retries, dead letters."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import BrokerName, FailoverEvent, OrderStatus
from tests.builders import make_intent, make_route
from tests.conftest import eventually, fetch_all, stream_messages
from tests.integration.test_walking_skeleton import dead_letters
from workers.aggregator.persistence import AuditStore, Envelope
from workers.domain.reports import fill_message, report
from workers.domain.venue import VenueAmbiguous, VenueUnavailable
from workers.executor.app import build_executor
from workers.platform.bus import ensure_consumer, ensure_streams, publish
from workers.platform.settings import Settings
from workers.venues.simulated.venue import SimulatedVenue

pytestmark = pytest.mark.integration


async def test_replaying_a_batch_changes_nothing(db: AsyncEngine) -> None:
    """The inbox makes a second apply of the same messages a no-op, row for row."""
    intent = make_intent()
    route = make_route(intent)
    venue = SimulatedVenue(BrokerName.ALPACA)
    order = await venue.place_order(intent, intent.intent_id)
    batch = [
        Envelope("mbx.routes.alpaca", route),
        Envelope("mbx.exec.alpaca.accepted", report(route, OrderStatus.ACCEPTED, 1, order, final=False)),
        Envelope("mbx.fills.alpaca.AAPL", fill_message(route, order, order.fills[0])),
        Envelope("mbx.exec.alpaca.filled", report(route, OrderStatus.FILLED, 2, order)),
    ]
    store = AuditStore(db)
    assert await store.apply(batch) == 4

    async def snapshot() -> list[Any]:
        return [
            await fetch_all(db, f"SELECT * FROM {t} WHERE intent_id = :i ORDER BY id", i=intent.intent_id)
            for t in ("orders", "multi_broker_routes", "trade_logs")
        ]

    before = await snapshot()
    assert await store.apply(batch) == 0
    assert await store.apply(list(reversed(batch))) == 0
    assert await snapshot() == before
    [row] = before[0]
    assert (row["status"], row["filled_quantity"], row["report_seq"]) == ("filled", Decimal(10), 2)


async def test_a_stale_report_never_overwrites_a_newer_one(db: AsyncEngine) -> None:
    """Reports applied out of order leave the order in its latest state."""
    intent = make_intent()
    route = make_route(intent)
    order = await SimulatedVenue(BrokerName.ALPACA).place_order(intent, intent.intent_id)
    store = AuditStore(db)
    await store.apply([Envelope("mbx.exec.alpaca.filled", report(route, OrderStatus.FILLED, 2, order))])
    await store.apply([Envelope("mbx.exec.alpaca.accepted", report(route, OrderStatus.ACCEPTED, 1, order))])
    [row] = await fetch_all(db, "SELECT status FROM orders WHERE intent_id = :i", i=intent.intent_id)
    assert row["status"] == "filled"


class DownVenue(SimulatedVenue):
    """A broker whose API cannot be reached: every placement fails before sending."""

    def __init__(self) -> None:
        super().__init__(BrokerName.IBKR)
        self.attempts = 0

    async def place_order(self, intent: Any, client_order_id: str) -> Any:
        self.attempts += 1
        raise VenueUnavailable("connection refused")


class LostVenue(SimulatedVenue):
    """Every placement times out after sending, and no lookup finds the order until ``appear``
    places it (as a broker's order list that catches up late)."""

    def __init__(self) -> None:
        super().__init__(BrokerName.IBKR)
        self.attempts = 0
        self.appeared: Any = None

    async def place_order(self, intent: Any, client_order_id: str) -> Any:
        self.attempts += 1
        raise VenueAmbiguous("read timeout after sending")

    async def locate(self, intent: Any, client_order_id: str, since: Any, exclude: Any = frozenset()) -> Any:
        return self.appeared

    async def appear(self, intent: Any) -> None:
        self.appeared = await super().place_order(intent, intent.intent_id)


async def test_a_broker_that_cannot_be_reached_is_retried_then_failed_over(settings: Settings, nc: NatsClient) -> None:
    """Requests that provably never reached the broker are retried with delay; once the route
    has waited past routing.max_queue_wait_s (2 s) the executor hands it back to the router."""
    venue = DownVenue()
    worker = build_executor(settings, BrokerName.IBKR, venue)
    await worker.start()
    try:
        route = make_route(broker=BrokerName.IBKR, fallback_chain=(BrokerName.ALPACA,))
        await publish(nc.jetstream(), "mbx.routes.ibkr", route, intent_id=route.intent_id)

        async def failover() -> Any:
            found = [e for e in await stream_messages(nc, "EXECUTIONS", "mbx.failover.ibkr") if route.intent_id in e]
            return found[0] if found else None

        event = FailoverEvent.model_validate_json(await eventually(failover, timeout=20))
    finally:
        await worker.stop()
    assert venue.attempts >= 2
    assert event.reason_code == "broker_down"
    assert "past routing.max_queue_wait_s (2s)" in event.reason
    assert "none of its requests reached the broker" in event.reason
    assert event.decision == route


async def test_an_outcome_that_stays_unknown_is_looked_for_past_the_delivery_limit_never_dead_lettered(
    settings: Settings, nc: NatsClient
) -> None:
    """The order may exist but cannot be found yet: never failed over (that could double it)
    and never dead-lettered for its deliveries; once the broker shows it, it is reported."""
    venue = LostVenue()
    worker = build_executor(settings, BrokerName.IBKR, venue)
    await worker.start()
    limit = settings.topology.executor_consumer(BrokerName.IBKR).give_up_after
    try:
        route = make_route(broker=BrokerName.IBKR)
        await publish(nc.jetstream(), "mbx.routes.ibkr", route, intent_id=route.intent_id)
        await eventually(lambda: _at_least(venue.attempts, limit + 1), timeout=90, interval=0.2)
        assert not [d for d in await dead_letters(nc, "executor") if d.correlation_id == route.intent_id]
        await venue.appear(route.intent)

        async def filled() -> Any:
            subject = f"mbx.exec.ibkr.filled.{route.strategy_id}"
            return [e for e in await stream_messages(nc, "EXECUTIONS", subject) if route.intent_id in e]

        await eventually(filled, timeout=60)
    finally:
        await worker.stop()
    assert not [d for d in await dead_letters(nc, "executor") if d.correlation_id == route.intent_id]
    assert not [e for e in await stream_messages(nc, "EXECUTIONS", "mbx.failover.ibkr") if route.intent_id in e]


async def _at_least(value: int, wanted: int) -> bool:
    return value >= wanted


async def test_the_inbox_forgets_message_ids_past_the_streams_horizon(db: AsyncEngine) -> None:
    """Ids older than the retention are pruned in batches; recent ones, which a redelivery or a
    replay of the streams could still bring, stay."""
    from sqlalchemy import text

    tag = make_intent().intent_id
    async with db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO inbox (message_id, subject, received_at) "
                "SELECT :tag || '-old-' || i, 'mbx.test', now() - interval '9 days' FROM generate_series(1, 5) i "
                "UNION ALL "
                "SELECT :tag || '-new-' || i, 'mbx.test', now() - interval '6 days' FROM generate_series(1, 3) i"
            ),
            {"tag": tag},
        )
    deleted = await AuditStore(db).prune_inbox(batch=2)
    assert deleted >= 5
    left = await fetch_all(db, "SELECT message_id FROM inbox WHERE message_id LIKE :p", p=f"{tag}-%")
    assert sorted(r["message_id"] for r in left) == [f"{tag}-new-{i}" for i in (1, 2, 3)]


async def test_a_message_whose_deliveries_all_died_is_delivered_again(nc: NatsClient, isolated: Settings) -> None:
    """Workers that die holding a message use up deliveries without handling it (nothing is
    dead-lettered then): the server keeps delivering it rather than dropping it at a limit, so
    the first delivery a worker handles decides."""
    js = nc.jetstream()
    await ensure_streams(js, isolated.subjects)
    for spec in (
        isolated.topology.router_consumer(),
        isolated.topology.executor_consumer(BrokerName.SCHWAB),
        *isolated.topology.aggregator_consumers(),
    ):
        assert spec.max_deliver == -1
    spec = isolated.topology.executor_consumer(BrokerName.SCHWAB)
    await ensure_consumer(js, spec)
    route = make_route(broker=BrokerName.SCHWAB)
    await publish(js, isolated.subjects.route(BrokerName.SCHWAB, route.strategy_id), route, intent_id=route.intent_id)
    pull = await js.pull_subscribe_bind(spec.durable, spec.stream)
    for delivery in range(1, spec.give_up_after + 3):
        [msg] = await pull.fetch(1, timeout=5)
        assert msg.metadata.num_delivered == delivery
        await msg.nak()  # as if the worker holding it had died
    await pull.unsubscribe()
