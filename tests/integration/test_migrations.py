"""The Alembic migrations build exactly the ORM's schema, and undo it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, inspect, make_url, text

from tests.servers import Servers
from workers.db import migrate
from workers.settings import to_sqlalchemy_url

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


@pytest.fixture
def fresh_database(servers: Servers) -> Iterator[str]:
    """A scratch database on the session's server, dropped afterwards."""
    name = f"mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(to_sqlalchemy_url(servers.database_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(to_sqlalchemy_url(servers.database_url)).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


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
