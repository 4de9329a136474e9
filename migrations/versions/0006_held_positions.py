"""Held positions: running totals of the fills per broker and symbol, kept by a trigger.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 19:15:00

The aggregator publishes exposure every two seconds; summing every fill ever made each time
grew with the log (a 20,000-order day made the 200/s p99 twice the target). ``held_positions``
holds, per broker and symbol, the net filled quantity and the latest fill's price. An AFTER
INSERT trigger on ``trade_logs`` (per statement, over the rows actually inserted, so a fill
skipped as a duplicate changes nothing) keeps it, whoever writes the fills: the aggregator or
the legacy import. The upgrade fills it from the existing log.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Per broker and symbol among ``rows``: net quantity, and the price, time and id of the latest
# fill; in key order, so concurrent writers lock rows in the same order.
TOTALS = """
    SELECT broker_name, symbol,
           sum(CASE WHEN side = 'buy' THEN quantity ELSE -quantity END) AS quantity,
           (array_agg(price ORDER BY executed_at DESC, id DESC))[1] AS last_price,
           max(executed_at) AS last_executed_at,
           (array_agg(id ORDER BY executed_at DESC, id DESC))[1] AS last_fill
      FROM {rows}
  GROUP BY broker_name, symbol
  ORDER BY broker_name, symbol
"""

HOLD = f"""
CREATE FUNCTION hold_inserted_fills() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO held_positions (broker_name, symbol, quantity, last_price, last_executed_at, last_fill)
    {TOTALS.format(rows="inserted")}
    ON CONFLICT (broker_name, symbol) DO UPDATE SET
        quantity = held_positions.quantity + excluded.quantity,
        last_price = CASE WHEN (excluded.last_executed_at, excluded.last_fill)
                               > (held_positions.last_executed_at, held_positions.last_fill)
                          THEN excluded.last_price ELSE held_positions.last_price END,
        last_fill = CASE WHEN (excluded.last_executed_at, excluded.last_fill)
                              > (held_positions.last_executed_at, held_positions.last_fill)
                         THEN excluded.last_fill ELSE held_positions.last_fill END,
        last_executed_at = greatest(held_positions.last_executed_at, excluded.last_executed_at);
    RETURN NULL;
END
$$;
"""


def upgrade() -> None:
    op.create_table(
        "held_positions",
        sa.Column("broker_name", sa.String(length=20), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("quantity", sa.Numeric(precision=28, scale=10), nullable=False),
        sa.Column("last_price", sa.Numeric(precision=28, scale=10), nullable=False),
        sa.Column("last_executed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_fill", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("broker_name", "symbol", name=op.f("pk_held_positions")),
    )
    op.execute(HOLD)
    op.execute(
        "CREATE TRIGGER trade_logs_hold AFTER INSERT ON trade_logs REFERENCING NEW TABLE AS inserted "
        "FOR EACH STATEMENT EXECUTE FUNCTION hold_inserted_fills()"
    )
    op.execute(
        "INSERT INTO held_positions (broker_name, symbol, quantity, last_price, last_executed_at, last_fill) "
        + TOTALS.format(rows="trade_logs")
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER trade_logs_hold ON trade_logs")
    op.execute("DROP FUNCTION hold_inserted_fills()")
    op.drop_table("held_positions")
