"""Each order carries its decision time, the reference price it was routed at and its first
fill's time, so execution quality over time is read from one narrow index range of ``orders``.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 23:00:00

The dashboard charts fill rate, slippage, latency and fees per broker over time. Joined from
routes, orders and fills at read time that cost 28 microseconds an order (140 ms for 5,000
orders with a million rows in the audit trail); with the three values on the order row it is a
range scan of ``(broker_name, decided_at)``.

The values are kept by triggers whatever order the rows arrive in (the aggregator writes routes
and execution reports from different consumers, and a fill may be stored before its order's
report): an order row takes them from its route and fills on insert; a route stored later fills
in its order; fills stored later move its first fill time earlier if they are earlier. Existing
rows are filled in here.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ON_ORDER = """
CREATE FUNCTION order_timing_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.broker_name IS NULL THEN
        RETURN NEW;  -- refused by the router: never routed, never filled
    END IF;
    IF NEW.decided_at IS NULL THEN
        SELECT r.decided_at, (r.decision ->> 'reference_price')::numeric
          INTO NEW.decided_at, NEW.reference_price
          FROM multi_broker_routes r
         WHERE r.intent_id = NEW.intent_id AND r.attempt = NEW.attempt AND r.broker_name = NEW.broker_name;
    END IF;
    IF NEW.first_fill_at IS NULL THEN
        SELECT min(t.executed_at) INTO NEW.first_fill_at
          FROM trade_logs t WHERE t.intent_id = NEW.intent_id AND t.broker_name = NEW.broker_name;
    END IF;
    RETURN NEW;
END
$$;
"""

ON_ROUTES = """
CREATE FUNCTION order_timing_from_routes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE orders o
       SET decided_at = i.decided_at, reference_price = (i.decision ->> 'reference_price')::numeric
      FROM inserted i
     WHERE o.intent_id = i.intent_id AND o.attempt = i.attempt AND o.broker_name = i.broker_name
       AND o.decided_at IS NULL;
    RETURN NULL;
END
$$;
"""

ON_FILLS = """
CREATE FUNCTION order_timing_from_fills() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE orders o
       SET first_fill_at = f.first_fill_at
      FROM (SELECT intent_id, broker_name, min(executed_at) AS first_fill_at
              FROM inserted GROUP BY intent_id, broker_name) f
     WHERE o.intent_id = f.intent_id AND o.broker_name = f.broker_name
       AND (o.first_fill_at IS NULL OR o.first_fill_at > f.first_fill_at);
    RETURN NULL;
END
$$;
"""

BACKFILL = """
UPDATE orders o
   SET decided_at = r.decided_at, reference_price = (r.decision ->> 'reference_price')::numeric
  FROM multi_broker_routes r
 WHERE r.intent_id = o.intent_id AND r.attempt = o.attempt AND r.broker_name = o.broker_name;
UPDATE orders o
   SET first_fill_at = f.first_fill_at
  FROM (SELECT intent_id, broker_name, min(executed_at) AS first_fill_at
          FROM trade_logs GROUP BY intent_id, broker_name) f
 WHERE o.intent_id = f.intent_id AND o.broker_name = f.broker_name
"""


def upgrade() -> None:
    op.add_column("orders", sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("orders", sa.Column("reference_price", sa.Numeric(precision=28, scale=10), nullable=True))
    op.add_column("orders", sa.Column("first_fill_at", sa.DateTime(timezone=True), nullable=True))
    for statement in BACKFILL.split(";"):
        op.execute(statement)
    op.create_index(op.f("ix_orders_broker_name_decided_at"), "orders", ["broker_name", "decided_at"])
    op.execute(ON_ORDER)
    op.execute(ON_ROUTES)
    op.execute(ON_FILLS)
    op.execute(
        "CREATE TRIGGER orders_timing BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION order_timing_on_insert()"
    )
    op.execute(
        "CREATE TRIGGER multi_broker_routes_timing AFTER INSERT ON multi_broker_routes REFERENCING NEW TABLE AS "
        "inserted FOR EACH STATEMENT EXECUTE FUNCTION order_timing_from_routes()"
    )
    op.execute(
        "CREATE TRIGGER trade_logs_timing AFTER INSERT ON trade_logs REFERENCING NEW TABLE AS inserted "
        "FOR EACH STATEMENT EXECUTE FUNCTION order_timing_from_fills()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER trade_logs_timing ON trade_logs")
    op.execute("DROP TRIGGER multi_broker_routes_timing ON multi_broker_routes")
    op.execute("DROP TRIGGER orders_timing ON orders")
    op.execute("DROP FUNCTION order_timing_from_fills()")
    op.execute("DROP FUNCTION order_timing_from_routes()")
    op.execute("DROP FUNCTION order_timing_on_insert()")
    op.drop_index(op.f("ix_orders_broker_name_decided_at"), table_name="orders")
    op.drop_column("orders", "first_fill_at")
    op.drop_column("orders", "reference_price")
    op.drop_column("orders", "decided_at")
