"""`mbx import-legacy` on a SQLite single-broker database, end to end through the real CLI."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import fetch_all
from tests.integration.test_cli import mbx
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration


def single_broker_db(path: Path) -> Path:
    """The shape of a pre-mbx, Alpaca-only trading database: no broker_name anywhere."""
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE orders (id INTEGER PRIMARY KEY, client_order_id TEXT, alpaca_order_id TEXT,
            symbol TEXT, side TEXT, qty REAL, filled_qty REAL, filled_avg_price REAL, type TEXT,
            status TEXT, commission REAL, created_at TEXT);
        CREATE TABLE positions (id INTEGER PRIMARY KEY, symbol TEXT, qty REAL, avg_entry_price REAL,
            current_price REAL, market_value REAL, unrealized_pl REAL);
        CREATE TABLE trade_logs (id INTEGER PRIMARY KEY, order_id INTEGER, symbol TEXT, side TEXT,
            qty REAL, price REAL, commission REAL, timestamp TEXT);
        INSERT INTO orders VALUES
            (1, 'old-1', 'a-1', 'aapl', 'buy', 10, 10, 190.5, 'market', 'filled', 0, '2026-01-05T14:30:00'),
            (2, 'old-2', 'a-2', 'MSFT', 'buy', 5, 5, 410.25, 'limit', 'filled', 0, '2026-01-06T15:00:00'),
            (3, 'old-3', 'a-3', 'AAPL', 'sell', 4, 4, 195.0, 'market', 'filled', 0, '2026-02-01T14:31:00'),
            (4, 'old-4', 'a-4', 'TSLA', 'buy', 2, 0, NULL, 'limit', 'canceled', 0, '2026-02-02T16:00:00');
        INSERT INTO positions VALUES
            (1, 'AAPL', 6, 190.5, 200, 1200, 57),
            (2, 'MSFT', 5, 410.25, 400, 2000, -51.25);
        INSERT INTO trade_logs VALUES
            (1, 1, 'AAPL', 'buy', 6, 190.0, 0, '2026-01-05T14:30:01'),
            (2, 1, 'AAPL', 'buy', 4, 191.25, 0, '2026-01-05T14:30:02'),
            (3, 2, 'MSFT', 'buy', 5, 410.25, 0, '2026-01-06T15:00:05'),
            (4, 3, 'AAPL', 'sell', 4, 195.0, 0.02, '2026-02-01T14:31:01');
        """
    )
    con.commit()
    con.close()
    return path


async def test_legacy_import_dry_run_then_import_then_again(isolated: Settings, tmp_path: Path) -> None:
    source = single_broker_db(tmp_path / "trading.db")
    env = {"MBX_DATABASE_URL": isolated.database_url or "", "MBX_NATS_URL": isolated.nats_url or ""}
    url = f"sqlite:///{source}"
    backups = tmp_path / "backups"
    db = make_engine(isolated.database_url or "", pool_size=1)
    try:
        code, out = await mbx("import-legacy", "--from", url, "--broker", "alpaca", "--dry-run", env=env)
        assert code == 0, out
        assert "dry run: nothing written" in out
        assert "orders" in out and "MISMATCH" not in out
        assert not await fetch_all(db, "SELECT 1 FROM orders")
        assert not backups.exists()

        code, out = await mbx(
            "import-legacy", "--from", url, "--broker", "alpaca", "--backup-dir", str(backups), env=env
        )
        assert code == 0, out
        assert "validation: every table matches" in out
        copies = sorted(p.name for p in backups.iterdir())
        assert any(name.startswith("trading.db.") and name.endswith(".bak") for name in copies)
        assert any(name.startswith("legacy-") and name.endswith(".json") for name in copies)

        orders = await fetch_all(db, "SELECT * FROM orders ORDER BY client_order_id")
        assert [(o["broker_name"], o["client_order_id"], o["status"]) for o in orders] == [
            ("alpaca", "old-1", "filled"),
            ("alpaca", "old-2", "filled"),
            ("alpaca", "old-3", "filled"),
            ("alpaca", "old-4", "cancelled"),
        ]
        assert orders[0]["symbol"] == "AAPL" and orders[0]["average_price"] == Decimal("190.5")
        assert orders[0]["broker_order_id"] == "a-1"
        positions = await fetch_all(
            db, "SELECT broker_name, symbol, quantity, average_cost FROM positions ORDER BY symbol"
        )
        assert [tuple(p.values()) for p in positions] == [
            ("alpaca", "AAPL", 6, Decimal("190.5")),
            ("alpaca", "MSFT", 5, Decimal("410.25")),
        ]
        fills = await fetch_all(db, "SELECT * FROM trade_logs ORDER BY fill_id")
        assert len(fills) == 4 and {f["broker_name"] for f in fills} == {"alpaca"}
        assert sum(f["quantity"] * f["price"] for f in fills) == 6 * Decimal("190") + 4 * Decimal(
            "191.25"
        ) + 5 * Decimal("410.25") + 4 * Decimal(195)
        assert {f["intent_id"] for f in fills if f["symbol"] == "MSFT"} == {orders[1]["intent_id"]}

        code, out = await mbx(
            "import-legacy", "--from", url, "--broker", "alpaca", "--backup-dir", str(backups), env=env
        )
        assert code == 0, out
        assert "validation: every table matches" in out
        assert len(await fetch_all(db, "SELECT 1 FROM orders")) == 4  # nothing doubled
    finally:
        await db.dispose()


async def test_legacy_import_says_what_is_wrong_with_the_source(isolated: Settings, tmp_path: Path) -> None:
    env = {"MBX_DATABASE_URL": isolated.database_url or ""}
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    code, out = await mbx("import-legacy", "--from", f"sqlite:///{empty}", "--broker", "alpaca", env=env)
    assert code == 1
    assert "orders" in out and "Traceback" not in out
    code, out = await mbx("import-legacy", "--from", "not a url", "--broker", "alpaca", env=env)
    assert code == 2 and "--from" in out
    code, out = await mbx("import-legacy", "--from", f"sqlite:///{empty}", "--broker", "nobroker", env=env)
    assert code == 2


async def test_a_fill_without_a_time_is_reported_not_imported_with_an_invented_time(
    isolated: Settings, tmp_path: Path
) -> None:
    """The validation report lists the fill and the command fails; the other rows are imported
    and no fill gets the time of the import."""
    source = single_broker_db(tmp_path / "trading.db")
    con = sqlite3.connect(source)
    con.execute("INSERT INTO trade_logs VALUES (5, 4, 'TSLA', 'buy', 1, 250.0, 0, NULL)")
    con.commit()
    con.close()
    env = {"MBX_DATABASE_URL": isolated.database_url or ""}
    code, out = await mbx(
        "import-legacy", "--from", f"sqlite:///{source}", "--broker", "alpaca", "--backup-dir", str(tmp_path), env=env
    )
    assert code == 1, out
    assert "trade_logs id 5: no time" in " ".join(out.split())
    assert "1 source rows were not imported" in out
    db = make_engine(isolated.database_url or "", pool_size=1)
    try:
        fills = await fetch_all(db, "SELECT fill_id, executed_at FROM trade_logs ORDER BY fill_id")
        assert [f["fill_id"] for f in fills] == [f"legacy:alpaca:{i}" for i in (1, 2, 3, 4)]
        assert max(f["executed_at"] for f in fills).year == 2026 and all(f["executed_at"].month <= 2 for f in fills)
    finally:
        await db.dispose()
