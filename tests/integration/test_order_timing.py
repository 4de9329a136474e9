"""An order row carries its decision time, reference price and first fill time (migration
0010), whatever order the route, the order and its fills are stored in."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text

from tests.conftest import fetch_all
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration

DECIDED = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
ROUTE = """
INSERT INTO multi_broker_routes
       (intent_id, strategy_id, broker_name, attempt, rule, fallback_chain, decision, decided_at)
VALUES (:i, 's', 'alpaca', 1, 'default:equity', '[]', '{"reference_price": "100.25", "reason": "r"}', :at)
"""
ORDER = """
INSERT INTO orders (intent_id, strategy_id, broker_name, client_order_id, broker_order_id, symbol, asset_class, side,
                    order_type, status, average_price, filled_quantity)
VALUES (:i, 's', 'alpaca', :i, :bo, 'AAPL', 'equity', 'buy', 'market', 'filled', 100.5, 10)
"""
FILL = """
INSERT INTO trade_logs (fill_id, intent_id, strategy_id, broker_name, broker_order_id, symbol, side, quantity, price,
                        executed_at)
VALUES (:f, :i, 's', 'alpaca', :bo, 'AAPL', 'buy', 5, 100.5, :at)
"""
STEPS = {
    "route": [(ROUTE, {"at": DECIDED})],
    "order": [(ORDER, {})],
    "late fill": [(FILL, {"f": "2", "at": DECIDED + timedelta(milliseconds=90)})],
    "early fill": [(FILL, {"f": "1", "at": DECIDED + timedelta(milliseconds=40)})],
}


async def test_the_order_row_gets_its_timing_in_any_arrival_order(isolated: Settings) -> None:
    """Every order of arrival of the route, the order and an early and a late fill, each in a
    transaction of its own as the aggregator's consumers write them."""
    engine = make_engine(isolated.sqlalchemy_url(), pool_size=1)
    try:
        for arrival in itertools.permutations(STEPS):
            intent = "timing-" + "-".join(step.split()[0] for step in arrival)
            for step in arrival:
                for sql, params in STEPS[step]:
                    values = {"i": intent, "bo": f"bo-{intent}", **params, "f": f"{intent}-{params.get('f', '')}"}
                    async with engine.begin() as conn:
                        await conn.execute(text(sql), values)
            [order] = await fetch_all(
                engine, "SELECT decided_at, reference_price, first_fill_at FROM orders WHERE intent_id = :i", i=intent
            )
            assert order["decided_at"] == DECIDED, arrival
            assert order["reference_price"] == Decimal("100.25"), arrival
            assert order["first_fill_at"] == DECIDED + timedelta(milliseconds=40), arrival
    finally:
        await engine.dispose()
