"""Execution quality per broker, and the cross-broker comparison, as views.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 16:40:00

``broker_execution_quality``: per broker, over every attempt routed to it: orders, fills,
rejections and failures, fill and reject rates, average slippage of filled orders against the
reference price the router saw (basis points, positive = worse for us), latency from the route
decision to the first fill (p50, p99, milliseconds) and fees paid.

``cross_broker_symbol_comparison``: the same per broker and symbol, to compare brokers on the
same instrument.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PER_ORDER = """
    SELECT o.broker_name, o.symbol, o.status, o.fees, o.average_price,
           (r.decision ->> 'reference_price')::numeric AS reference_price,
           CASE WHEN o.side = 'buy' THEN 1 ELSE -1 END AS direction,
           r.decided_at,
           (SELECT min(t.executed_at) FROM trade_logs t
             WHERE t.broker_name = o.broker_name AND t.broker_order_id = o.broker_order_id) AS first_fill_at
      FROM orders o
      JOIN multi_broker_routes r
        ON r.intent_id = o.intent_id AND r.attempt = o.attempt AND r.broker_name = o.broker_name
     WHERE o.broker_name IS NOT NULL
"""

MEASURES = """
    count(*) AS orders,
    count(*) FILTER (WHERE status = 'filled') AS filled,
    count(*) FILTER (WHERE status = 'rejected') AS rejected,
    count(*) FILTER (WHERE status = 'failed') AS failed,
    round(count(*) FILTER (WHERE status = 'filled')::numeric / count(*), 4) AS fill_rate,
    round(count(*) FILTER (WHERE status IN ('rejected', 'failed'))::numeric / count(*), 4) AS reject_rate,
    round(avg(direction * (average_price - reference_price) / reference_price * 10000)
          FILTER (WHERE status = 'filled' AND reference_price > 0), 3) AS avg_slippage_bps,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM first_fill_at - decided_at) * 1000)
        AS latency_p50_ms,
    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM first_fill_at - decided_at) * 1000)
        AS latency_p99_ms,
    coalesce(sum(fees), 0) AS fees_paid
"""


def upgrade() -> None:
    op.create_index(
        op.f("ix_trade_logs_broker_name_broker_order_id"), "trade_logs", ["broker_name", "broker_order_id"]
    )
    op.execute(
        f"CREATE VIEW broker_execution_quality AS SELECT broker_name, {MEASURES} "
        f"FROM ({PER_ORDER}) per_order GROUP BY broker_name"
    )
    op.execute(
        f"CREATE VIEW cross_broker_symbol_comparison AS SELECT symbol, broker_name, {MEASURES} "
        f"FROM ({PER_ORDER}) per_order GROUP BY symbol, broker_name"
    )


def downgrade() -> None:
    op.execute("DROP VIEW cross_broker_symbol_comparison")
    op.execute("DROP VIEW broker_execution_quality")
    op.drop_index(op.f("ix_trade_logs_broker_name_broker_order_id"), table_name="trade_logs")
