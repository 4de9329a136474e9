"""Execution quality over each broker's latest orders, for the router's fill score.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21 19:30:00

``recent_execution_quality(brokers, per_broker)`` gives the measures of the
``broker_execution_quality`` view (0003) over the latest ``per_broker`` routes of each broker
(newest by decision time, through the (broker_name, decided_at) index). The aggregator
publishes it every 10 s as the fill score: over every order ever made it grew with the audit
trail, and the router is better served by recent quality. The all-time views stay for
operators. The measures are repeated from 0003 on purpose: a migration's text is frozen.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = """
CREATE FUNCTION recent_execution_quality(brokers text[], per_broker integer)
RETURNS TABLE (
    broker_name varchar, orders bigint, filled bigint, rejected bigint, failed bigint,
    fill_rate numeric, reject_rate numeric, avg_slippage_bps numeric,
    latency_p50_ms double precision, latency_p99_ms double precision, fees_paid numeric
)
LANGUAGE sql STABLE AS $$
    SELECT per_order.broker_name,
           count(*),
           count(*) FILTER (WHERE status = 'filled'),
           count(*) FILTER (WHERE status = 'rejected'),
           count(*) FILTER (WHERE status = 'failed'),
           round(count(*) FILTER (WHERE status = 'filled')::numeric / count(*), 4),
           round(count(*) FILTER (WHERE status IN ('rejected', 'failed'))::numeric / count(*), 4),
           round(avg(direction * (average_price - reference_price) / reference_price * 10000)
                 FILTER (WHERE status = 'filled' AND reference_price > 0), 3),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM first_fill_at - decided_at) * 1000),
           percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM first_fill_at - decided_at) * 1000),
           coalesce(sum(fees), 0)
      FROM (
        SELECT o.broker_name, o.status, o.fees, o.average_price,
               (r.decision ->> 'reference_price')::numeric AS reference_price,
               CASE WHEN o.side = 'buy' THEN 1 ELSE -1 END AS direction,
               r.decided_at,
               (SELECT min(t.executed_at) FROM trade_logs t
                 WHERE t.broker_name = o.broker_name AND t.broker_order_id = o.broker_order_id) AS first_fill_at
          FROM unnest(brokers) AS b(name)
          CROSS JOIN LATERAL (
                SELECT * FROM multi_broker_routes routes
                 WHERE routes.broker_name = b.name
                 ORDER BY routes.decided_at DESC
                 LIMIT per_broker) r
          JOIN orders o ON o.intent_id = r.intent_id AND o.attempt = r.attempt AND o.broker_name = r.broker_name
      ) per_order
  GROUP BY per_order.broker_name
$$;
"""


def upgrade() -> None:
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION recent_execution_quality(text[], integer)")
