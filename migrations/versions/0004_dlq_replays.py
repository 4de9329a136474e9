"""Dead-letter replays: each republished dead letter, recorded by `mbx dlq replay`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dlq_replays",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("letter_id", sa.String(length=200), nullable=False),
        sa.Column("stage", sa.String(length=20), nullable=False),
        sa.Column("original_subject", sa.String(length=255), nullable=False),
        sa.Column("new_message_id", sa.String(length=200), nullable=False),
        sa.Column("intent_id", sa.String(length=200), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("replayed_by", sa.String(length=100), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dlq_replays")),
        sa.UniqueConstraint("new_message_id", name=op.f("uq_dlq_replays_new_message_id")),
    )
    op.create_index(op.f("ix_dlq_replays_letter_id"), "dlq_replays", ["letter_id"])
    op.create_index(op.f("ix_dlq_replays_intent_id"), "dlq_replays", ["intent_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_dlq_replays_intent_id"), table_name="dlq_replays")
    op.drop_index(op.f("ix_dlq_replays_letter_id"), table_name="dlq_replays")
    op.drop_table("dlq_replays")
