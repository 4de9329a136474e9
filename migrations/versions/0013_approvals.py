"""Approvals: every step of every order held for an operator's approval (issue 31, point 1).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08 02:00:00

The router publishes each step of a hold as an ``ApprovalEvent`` (pending, each approval, denied,
expired, released); the aggregator stores one row per step: who decided, when, with what note,
the rule, how many approvals were needed and given by then, and the order as it was held. The
pending step reaches the aggregator twice (for operators on ``mbx.approvals.pending`` and for the
strategy on ``exec.unrouted.pending_approval.<strategy>``) under two message ids: the unique
(intent_id, step_no) keeps one row, whichever arrives first.

Indexes: the unique (intent_id, step_no) serves an intent's steps (``mbx explain``); ``at`` the
newest steps first; (step, at) the recent decisions (the dashboard's approvals tab).

Safe on a populated database: a new, empty table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("intent_id", sa.String(length=48), nullable=False),
        sa.Column("step_no", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=10), nullable=False),
        sa.Column("strategy_id", sa.String(length=64), nullable=False),
        sa.Column("rule", sa.String(length=100), nullable=False),
        sa.Column("operator", sa.String(length=100), server_default="", nullable=False),
        sa.Column("note", sa.Text(), server_default="", nullable=False),
        sa.Column("approvers_needed", sa.Integer(), nullable=False),
        sa.Column("approvals_given", sa.Integer(), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("side", sa.String(length=4), nullable=False),
        sa.Column("quantity", sa.Numeric(precision=28, scale=10), nullable=True),
        sa.Column("notional", sa.Numeric(precision=28, scale=10), nullable=True),
        sa.Column("estimated_notional", sa.Numeric(precision=28, scale=10), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
        sa.UniqueConstraint("intent_id", "step_no", name=op.f("uq_approvals_intent_id_step_no")),
    )
    op.create_index(op.f("ix_approvals_at"), "approvals", ["at"])
    op.create_index(op.f("ix_approvals_step_at"), "approvals", ["step", "at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_approvals_step_at"), table_name="approvals")
    op.drop_index(op.f("ix_approvals_at"), table_name="approvals")
    op.drop_table("approvals")
