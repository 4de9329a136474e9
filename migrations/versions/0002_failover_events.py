"""Failover events: every failed attempt that was handed to the next broker.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "failover_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("intent_id", sa.String(length=48), nullable=False),
        sa.Column("strategy_id", sa.String(length=64), nullable=False),
        sa.Column("failed_broker", sa.String(length=20), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("reason_code", sa.String(length=50), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failover_events")),
        sa.UniqueConstraint("intent_id", "attempt", name=op.f("uq_failover_events_intent_id_attempt")),
    )
    op.create_index(
        op.f("ix_failover_events_failed_broker_occurred_at"),
        "failover_events",
        ["failed_broker", "occurred_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_failover_events_failed_broker_occurred_at"), table_name="failover_events")
    op.drop_table("failover_events")
