"""An index on inbox.received_at, so the aggregator can prune the inbox past its horizon.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 17:40:00

The inbox only has to remember a message id while the message can still arrive again: as long
as the streams keep it (7 days) plus the publish dedup window (1 hour). The aggregator deletes
older rows in batches (``AuditStore.prune_inbox``); this index keeps that cheap.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_inbox_received_at", "inbox", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_inbox_received_at", table_name="inbox")
