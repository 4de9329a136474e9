"""The Alembic migrations build exactly the ORM's schema, and undo it."""

from __future__ import annotations

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
