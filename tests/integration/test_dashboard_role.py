"""The dashboard's database role reads everything and can append only the audit rows the
dashboard writes (config changes, dead-letter replays): it can change no trading record."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings, dashboard_database_url, to_sqlalchemy_url

pytestmark = pytest.mark.integration

REFUSED = (
    "INSERT INTO orders (intent_id, strategy_id, client_order_id, symbol, asset_class, side, order_type, status)"
    " VALUES ('i', 's', 'c', 'AAPL', 'equity', 'buy', 'market', 'new')",
    "UPDATE orders SET status = 'filled'",
    "DELETE FROM trade_logs",
    "UPDATE config_changes SET summary = 'rewritten'",
    "DELETE FROM dlq_replays",
    "TRUNCATE inbox",
    "CREATE TABLE mine (id int)",
)


async def test_the_dashboard_role_reads_and_appends_audit_rows_only(isolated: Settings) -> None:
    assert isolated.database_url
    url = dashboard_database_url(isolated, isolated.database_url)
    assert "mbx_dashboard@" in url and ":" not in url.split("//", 1)[1].split("@", 1)[0]  # no password in it
    engine = make_engine(to_sqlalchemy_url(url), pool_size=1)
    try:
        async with engine.begin() as conn:
            assert (await conn.execute(text("SELECT current_user"))).scalar() == "mbx_dashboard"
            for table in ("orders", "trade_logs", "multi_broker_routes", "positions", "broker_execution_quality"):
                await conn.execute(text(f"SELECT count(*) FROM {table}"))
            await conn.execute(
                text("INSERT INTO config_changes (revision, changed_by, summary, config) VALUES (1, 'a', 's', '{}')")
            )
            await conn.execute(
                text(
                    "INSERT INTO dlq_replays (letter_id, stage, original_subject, new_message_id, error, replayed_by)"
                    " VALUES ('l', 'router', 'mbx.x', 'n', 'e', 'a')"
                )
            )
        for statement in REFUSED:
            async with engine.connect() as conn:
                with pytest.raises(ProgrammingError, match="permission denied"):
                    await conn.execute(text(statement))
    finally:
        await engine.dispose()


def test_an_explicit_dashboard_url_wins(isolated: Settings) -> None:
    given = "postgresql://reader:secret@db.internal:5432/mbx"
    assert (
        dashboard_database_url(isolated.model_copy(update={"dashboard_database_url": given}), "postgresql://x@y/z")
        == given
    )
