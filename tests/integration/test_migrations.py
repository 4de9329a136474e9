"""The Alembic migrations build exactly the ORM's schema, and undo it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, inspect, text

from workers.platform.db import migrate
from workers.platform.settings import to_sqlalchemy_url

pytestmark = pytest.mark.integration

SEED_TABLES = {
    "multi_broker_connections",
    "multi_broker_routes",
    "orders",
    "positions",
    "trade_logs",
    "broker_accounts",
    "inbox",
}


def test_upgrade_to_head_matches_the_models_and_downgrade_to_base_removes_everything(fresh_database: str) -> None:
    """Upgrade, Alembic's check (models == migrations), downgrade, upgrade again."""
    engine = create_engine(to_sqlalchemy_url(fresh_database))
    try:
        migrate.upgrade(fresh_database)
        inspector = inspect(engine)
        assert set(inspector.get_table_names()) >= SEED_TABLES
        assert len(inspector.get_columns("multi_broker_connections")) == 10
        assert len(inspector.get_columns("multi_broker_routes")) == 12
        for table in ("orders", "positions", "trade_logs", "broker_accounts"):
            assert "broker_name" in {c["name"] for c in inspector.get_columns(table)}
        order_indexes = {tuple(ix["column_names"]) for ix in inspector.get_indexes("orders")}
        assert {("broker_name", "symbol"), ("broker_name", "status")} <= order_indexes

        migrate.check(fresh_database)  # raises if the models and the migrations disagree

        migrate.downgrade(fresh_database)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(fresh_database)
        assert set(inspect(engine).get_table_names()) >= SEED_TABLES
    finally:
        engine.dispose()


FILL = (
    "INSERT INTO trade_logs (fill_id, intent_id, strategy_id, broker_name, broker_order_id, symbol, side,"
    " quantity, price, executed_at) VALUES (:fill, 'i', 's', :broker, 'o', :symbol, :side, :qty, :price, :at)"
    " ON CONFLICT (fill_id) DO NOTHING"
)


def test_held_positions_follow_every_inserted_fill_once(fresh_database: str) -> None:
    """The trigger keeps net quantity and the latest price per broker and symbol; the upgrade
    builds them from fills already logged; a fill skipped as a duplicate changes nothing."""
    engine = create_engine(to_sqlalchemy_url(fresh_database))
    try:
        migrate.upgrade(fresh_database, "0005")
        with engine.begin() as conn:  # logged before the table existed
            conn.execute(
                text(FILL),
                dict(fill="f1", broker="alpaca", symbol="AAPL", side="buy", qty=10, price=100, at="2026-11-21 10:00Z"),
            )
        migrate.upgrade(fresh_database)
        with engine.begin() as conn:
            rows = [
                dict(fill="f2", broker="alpaca", symbol="AAPL", side="sell", qty=4, price=101, at="2026-11-21 10:05Z"),
                dict(fill="f3", broker="ibkr", symbol="AAPL", side="buy", qty=2, price=99, at="2026-11-21 10:01Z"),
                dict(fill="f2", broker="alpaca", symbol="AAPL", side="sell", qty=4, price=101, at="2026-11-21 10:05Z"),
            ]
            conn.execute(text(FILL), rows)  # f2 twice: the second is skipped
        with engine.begin() as conn:  # an older fill arriving late does not move the mark
            conn.execute(
                text(FILL),
                dict(fill="f4", broker="alpaca", symbol="AAPL", side="buy", qty=1, price=90, at="2026-11-21 09:00Z"),
            )
        with engine.connect() as conn:
            held = {
                r.broker_name: (r.quantity, r.last_price)
                for r in conn.execute(text("SELECT broker_name, quantity, last_price FROM held_positions"))
            }
            summed = {
                r.broker_name: r.quantity
                for r in conn.execute(
                    text(
                        "SELECT broker_name, sum(CASE WHEN side = 'buy' THEN quantity ELSE -quantity END) AS quantity"
                        " FROM trade_logs GROUP BY broker_name"
                    )
                )
            }
        assert held == {"alpaca": (7, 101), "ibkr": (2, 99)}
        assert {b: q for b, (q, _) in held.items()} == summed
    finally:
        engine.dispose()


def test_orders_stored_before_0014_get_their_quote_fills_and_failover(fresh_database: str) -> None:
    """The upgrade fills in the new columns of orders already stored, from their route, their
    fills and their failover; an order with none of them keeps them empty."""
    engine = create_engine(to_sqlalchemy_url(fresh_database))
    try:
        migrate.upgrade(fresh_database, "0013")
        with engine.begin() as conn:
            for intent, quote in (("q1", {"bid": "99.98", "ask": "100.02", "mid": "100.00"}), ("q2", None)):
                conn.execute(
                    text(
                        "INSERT INTO multi_broker_routes (intent_id, strategy_id, broker_name, attempt, rule,"
                        " fallback_chain, decision, decided_at) VALUES (:i, 's', 'alpaca', 1, 'score', '[]',"
                        " CAST(:d AS jsonb), '2026-11-21 10:00Z')"
                    ),
                    {"i": intent, "d": json.dumps({"reference_price": "100.00", "quote": quote})},
                )
                conn.execute(
                    text(
                        "INSERT INTO orders (intent_id, strategy_id, broker_name, client_order_id, symbol,"
                        " asset_class, side, order_type, status, decided_at) VALUES (:i, 's', 'alpaca', :i,"
                        " 'AAPL', 'equity', 'buy', 'market', 'filled', '2026-11-21 10:00Z')"
                    ),
                    {"i": intent},
                )
            for fill, qty, price, at in (("f1", 4, "100.5", "10:00:01"), ("f2", 6, "100.25", "10:00:02")):
                conn.execute(
                    text(
                        "INSERT INTO trade_logs (fill_id, intent_id, strategy_id, broker_name, broker_order_id,"
                        " symbol, side, quantity, price, fee, executed_at) VALUES (:f, 'q1', 's', 'alpaca', 'o',"
                        " 'AAPL', 'buy', :q, :p, 0.05, CAST(:at AS timestamptz))"
                    ),
                    {"f": fill, "q": qty, "p": price, "at": f"2026-11-21 {at}Z"},
                )
            conn.execute(
                text(
                    "INSERT INTO failover_events (intent_id, strategy_id, failed_broker, attempt, reason_code,"
                    " reason, occurred_at) VALUES ('q1', 's', 'alpaca', 1, 'x', 'x', '2026-11-21 10:00:03Z')"
                )
            )
        migrate.upgrade(fresh_database)
        with engine.connect() as conn:
            found = {
                r.intent_id: tuple(r)[1:]
                for r in conn.execute(
                    text(
                        "SELECT intent_id, quote_bid, quote_ask, quote_mid, traded_quantity, traded_value,"
                        " traded_fees, last_fill_at, failed_over FROM orders"
                    )
                )
            }
        assert found["q1"] == (
            Decimal("99.98"),
            Decimal("100.02"),
            Decimal("100.00"),
            Decimal(10),
            Decimal("1003.50"),
            Decimal("0.10"),
            datetime(2026, 11, 21, 10, 0, 2, tzinfo=UTC),
            True,
        )
        assert found["q2"] == (None, None, None, None, None, None, None, False)
    finally:
        engine.dispose()
