"""Failover on a real server: a broker's rejection moves the intent along the fallback chain."""

from __future__ import annotations

import json
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import BrokerName
from tests.builders import OPTION, intent_payload
from tests.conftest import eventually, fetch_all
from tests.integration.test_walking_skeleton import publish_json
from workers.domain.venue import VenueRejected
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings
from workers.venues.simulated.venue import SimulatedVenue

pytestmark = pytest.mark.integration


class BrokeVenue(SimulatedVenue):
    """A broker that refuses every order for lack of buying power (another broker may have it)."""

    async def place_order(self, intent: Any, client_order_id: str) -> Any:
        raise VenueRejected(
            "insufficient_buying_power", f"{self.broker} account has no buying power", order_specific=False
        )


async def test_a_broker_rejection_fails_over_to_the_next_broker(
    start_pipeline: Any, nc: NatsClient, db: AsyncEngine
) -> None:
    """Schwab refuses an option order: the router sends attempt 2 to the next broker, which fills it."""
    pipeline = await start_pipeline(venue_overrides={BrokerName.SCHWAB: BrokeVenue(BrokerName.SCHWAB)})
    payload = intent_payload(**OPTION)
    await publish_json(nc, payload)

    async def filled() -> list[Any]:
        rows = await fetch_all(db, "SELECT * FROM orders WHERE intent_id = :i ORDER BY attempt", i=payload["intent_id"])
        return rows if any(r["status"] == "filled" for r in rows) else []

    orders = await eventually(filled)
    assert [(o["broker_name"], o["attempt"], o["status"]) for o in orders] == [
        ("schwab", 1, "rejected"),
        (orders[1]["broker_name"], 2, "filled"),
    ]
    second = orders[1]["broker_name"]
    assert second != "schwab"

    routes = await eventually(
        lambda: fetch_all(
            db, "SELECT * FROM multi_broker_routes WHERE intent_id = :i AND attempt = 2", i=payload["intent_id"]
        )
    )
    assert routes[0]["failover_from"] == "schwab"
    assert routes[0]["broker_name"] == second
    assert "schwab" in {e["broker"] for e in routes[0]["decision"]["excluded"]}
    [failover] = await eventually(
        lambda: fetch_all(db, "SELECT * FROM failover_events WHERE intent_id = :i", i=payload["intent_id"])
    )
    assert (failover["failed_broker"], failover["attempt"], failover["reason_code"]) == (
        "schwab",
        1,
        "insufficient_buying_power",
    )
    placed = [
        o for o in await pipeline.venues[BrokerName(second)].book.all() if o.client_order_id == payload["intent_id"]
    ]
    assert len(placed) == 1


async def test_an_exhausted_chain_ends_in_a_terminal_rejection(
    start_pipeline: Any, nc: NatsClient, isolated: Settings
) -> None:
    """When every eligible broker refuses, the intent ends rejected by the router, visibly. On
    subjects and a database of its own: earlier tests' account figures once kept Schwab out of
    the first decision."""
    option_brokers = [BrokerName.SCHWAB, BrokerName.ALPACA, BrokerName.ROBINHOOD, BrokerName.IBKR]
    await start_pipeline(venue_overrides={b: BrokeVenue(b) for b in option_brokers}, own_settings=isolated)
    payload = intent_payload(**OPTION)
    subject = isolated.subjects.intent(payload["strategy_id"])
    await nc.jetstream().publish(subject, json.dumps(payload).encode(), headers={"Nats-Msg-Id": payload["intent_id"]})
    db = make_engine(isolated.database_url or "", pool_size=1)
    try:

        async def ended() -> list[Any]:
            rows = await fetch_all(
                db, "SELECT * FROM orders WHERE intent_id = :i AND broker_name IS NULL", i=payload["intent_id"]
            )
            return rows

        [final] = await eventually(ended)
        assert (final["status"], final["attempt"]) == ("rejected", 5)
        assert "every eligible broker failed" in final["reason"]
        failovers = await fetch_all(
            db,
            "SELECT failed_broker FROM failover_events WHERE intent_id = :i ORDER BY attempt",
            i=payload["intent_id"],
        )
    finally:
        await db.dispose()
    assert sorted(f["failed_broker"] for f in failovers) == sorted(option_brokers)
