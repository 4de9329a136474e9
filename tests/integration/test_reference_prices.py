"""The router prices orders from the configured quote source; a stale or missing quote is never
replaced by a made-up price (real router, executors and aggregator on the session's servers)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.builders import intent_payload
from tests.conftest import Pipeline, eventually, fetch_all
from tests.integration.test_walking_skeleton import final_order, publish_json
from workers.domain.config import parse_config
from workers.domain.quotes import Quote

pytestmark = pytest.mark.integration


class FeedQuotes:
    """A market-data feed standing in for a broker's: FRESH is current, STALE stopped a minute
    ago, DOWN raises as an unreachable feed does, anything else has no quote."""

    name = "test-feed"

    async def quote(self, symbol: str) -> Quote | None:
        now = datetime.now(UTC)
        if symbol == "DOWN":
            raise ConnectionError("feed unreachable")
        if symbol in ("FRESH", "STALE"):
            at = now if symbol == "FRESH" else now - timedelta(seconds=60)
            return Quote(symbol, Decimal("49.99"), Decimal("50.01"), at, self.name)
        return None


async def test_stale_and_missing_quotes_reject_market_orders_and_fresh_ones_are_recorded(
    start_pipeline: Callable[..., Awaitable[Pipeline]], nc: NatsClient, db: AsyncEngine
) -> None:
    """A fresh quote routes and is stored with the decision; a stale, missing or unreachable one
    rejects a market order with no_reference_price; a limit order routes at its limit price."""
    config = parse_config({"risk": {"max_order_notional": 100000}, "market_data": {"max_age_s": 5}})
    await start_pipeline(config, quotes=FeedQuotes())
    fresh = intent_payload(symbol="FRESH", quantity="4")
    stale = intent_payload(symbol="STALE", quantity="4")
    missing = intent_payload(symbol="NOQUOTE", quantity="4")
    down = intent_payload(symbol="DOWN", quantity="4")
    limit = intent_payload(symbol="STALE", quantity="4", order_type="limit", limit_price="60")
    for payload in (fresh, stale, missing, down, limit):
        await publish_json(nc, payload)

    [filled] = await final_order(db, fresh["intent_id"])
    assert filled["status"] == "filled"
    [route] = await db_routes(db, fresh["intent_id"])
    decision = route["decision"]
    assert Decimal(decision["reference_price"]) == Decimal(50)
    assert decision["quote"]["source"] == "test-feed"
    assert decision["quote"]["age_ms"] < 5000

    for payload, why in ((stale, "60.0s old"), (missing, "no quote for NOQUOTE"), (down, "feed unreachable")):
        [rejected] = await final_order(db, payload["intent_id"])
        assert (rejected["status"], rejected["broker_name"]) == ("rejected", None)
        assert why in rejected["reason"], rejected["reason"]
        assert rejected["reason"].endswith("a market order needs a limit_price then"), rejected["reason"]

    [limit_route] = await db_routes(db, limit["intent_id"])
    assert limit_route["broker_name"] == "alpaca"
    recorded = limit_route["decision"]
    assert recorded["reference_price"] is None
    assert recorded["quote"]["age_ms"] >= 60_000
    assert "priced at its limit price" in recorded["reason"]


async def db_routes(db: AsyncEngine, intent_id: str) -> list[dict]:
    async def check() -> list[dict]:
        return [
            dict(r) for r in await fetch_all(db, "SELECT * FROM multi_broker_routes WHERE intent_id = :i", i=intent_id)
        ]

    return await eventually(check)
