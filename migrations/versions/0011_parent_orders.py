"""Parent orders: their latest state in ``parent_orders``, and each child order linked to its parent.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 10:00:00

A parent order (an intent with an ``execution`` block, issue 30) is worked as ordinary child
intents. The aggregator keeps each parent's newest ``ParentReport`` in ``parent_orders`` (a
stale report never overwrites a newer one, as with orders) and writes the parent's id into
``orders.parent_intent_id`` of every child order: from the route's intent metadata when it
stores the order from its route, and from the parent's reports for child orders stored first
from a report (a router rejection has no route).

Safe on a populated database: the new column is nullable without a default (no table rewrite),
and its index is built with CREATE INDEX CONCURRENTLY, outside the migration's transaction, so
the aggregator keeps writing ``orders`` meanwhile. That part runs first and can be run again:
an index left invalid by an interrupted build is dropped and built anew. Orders stored before
this revision keep an empty parent: mbx had no parent orders then.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ORDERS_INDEX = "ix_orders_parent_intent_id"


def upgrade() -> None:
    # Commits whatever earlier revisions of this run did, then works outside a transaction.
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE orders ADD COLUMN IF NOT EXISTS parent_intent_id VARCHAR(48)")
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {ORDERS_INDEX}")
        op.create_index(ORDERS_INDEX, "orders", ["parent_intent_id"], postgresql_concurrently=True)
    op.create_table(
        "parent_orders",
        sa.Column("parent_intent_id", sa.String(length=48), nullable=False),
        sa.Column("strategy_id", sa.String(length=64), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("side", sa.String(length=4), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("quantity", sa.Numeric(precision=28, scale=10), nullable=False),
        sa.Column("filled_quantity", sa.Numeric(precision=28, scale=10), server_default="0", nullable=False),
        sa.Column("average_price", sa.Numeric(precision=28, scale=10), nullable=True),
        sa.Column("arrival_price", sa.Numeric(precision=28, scale=10), nullable=True),
        sa.Column("slippage_bps", sa.Double(), nullable=True),
        sa.Column("execution", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("children", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False),
        sa.Column("report_seq", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("parent_intent_id", name=op.f("pk_parent_orders")),
    )
    op.create_index(op.f("ix_parent_orders_created_at"), "parent_orders", ["created_at"])
    op.create_index(op.f("ix_parent_orders_strategy_id_created_at"), "parent_orders", ["strategy_id", "created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_parent_orders_strategy_id_created_at"), table_name="parent_orders")
    op.drop_index(op.f("ix_parent_orders_created_at"), table_name="parent_orders")
    op.drop_table("parent_orders")
    op.drop_index(ORDERS_INDEX, table_name="orders")
    op.drop_column("orders", "parent_intent_id")
