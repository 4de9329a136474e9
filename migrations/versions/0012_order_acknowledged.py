"""Each order records when its broker acknowledged it (``orders.acknowledged_at``), and the month
an order counts in for the best-execution report is indexed.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08 01:30:00

The best-execution report (``mbx report execution``, issue 31) gives the time from the router's
decision to the broker's acknowledgement. Nothing recorded that moment: the aggregator now
writes it from the first execution report that shows the broker holds the order (accepted, or
any later working or terminal status a broker reported, a rejection excepted), as the report's
``created_at`` (when the executor saw that state at the broker); the earliest is kept, as with
``first_fill_at``.

The report reads one month of orders by ``coalesce(decided_at, created_at)`` (an order the
router rejected has no decision time); the expression index makes that a range scan of the
month instead of a scan of every order ever stored.

Safe on a populated database: the new column is nullable without a default (no table rewrite),
and the index is built with CREATE INDEX CONCURRENTLY, outside the migration's transaction, so
the aggregator keeps writing ``orders`` meanwhile; an index left invalid by an interrupted build
is dropped and built anew. Orders stored before this revision keep an empty acknowledgement
time: it was never recorded, and the report leaves them out of that figure only.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONTH_INDEX = "ix_orders_report_month"


def upgrade() -> None:
    # Commits whatever earlier revisions of this run did, then works outside a transaction.
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE orders ADD COLUMN IF NOT EXISTS acknowledged_at TIMESTAMP WITH TIME ZONE")
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {MONTH_INDEX}")
        op.execute(f"CREATE INDEX CONCURRENTLY {MONTH_INDEX} ON orders ((coalesce(decided_at, created_at)))")


def downgrade() -> None:
    op.drop_index(MONTH_INDEX, table_name="orders")
    op.drop_column("orders", "acknowledged_at")
