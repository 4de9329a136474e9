"""What the dashboard needs: indexes for its bounded queries, and a database role of its own.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 22:30:00

Indexes: the newest route decisions overall and per strategy, the newest failovers, and a
symbol's orders, each read through an index rather than a scan of the audit trail.

The role ``mbx_dashboard`` (LOGIN, no password: give it one, or use trust/peer auth) may read
every table and view and append to the two audit tables the dashboard writes (``config_changes``
and ``dlq_replays``); it can change nothing else. It is created when the migrating user may
create roles; otherwise an administrator creates it (``CREATE ROLE mbx_dashboard LOGIN``) and
runs ``SELECT mbx_grant_dashboard()``, which this migration defines, to grant it. Roles belong
to the whole PostgreSQL cluster, so a downgrade revokes the grants but leaves the role.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GRANT_FUNCTION = """
CREATE FUNCTION mbx_grant_dashboard() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO mbx_dashboard', current_schema());
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO mbx_dashboard', current_schema());
    GRANT INSERT ON config_changes, dlq_replays TO mbx_dashboard;
    GRANT USAGE ON SEQUENCE config_changes_id_seq, dlq_replays_id_seq TO mbx_dashboard;
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO mbx_dashboard', current_schema());
END
$$;
"""

CREATE_AND_GRANT = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mbx_dashboard') THEN
        IF (SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            CREATE ROLE mbx_dashboard LOGIN;
        ELSE
            RAISE NOTICE 'role mbx_dashboard not created (no CREATEROLE): create it, then SELECT mbx_grant_dashboard()';
            RETURN;
        END IF;
    END IF;
    PERFORM mbx_grant_dashboard();
END
$$;
"""

REVOKE = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'mbx_dashboard') THEN
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE SELECT ON TABLES FROM mbx_dashboard',
                       current_schema());
        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM mbx_dashboard', current_schema());
        EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM mbx_dashboard', current_schema());
        EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM mbx_dashboard', current_schema());
    END IF;
END
$$;
"""


def upgrade() -> None:
    op.create_index(op.f("ix_multi_broker_routes_decided_at"), "multi_broker_routes", ["decided_at"])
    op.create_index(
        op.f("ix_multi_broker_routes_strategy_id_decided_at"), "multi_broker_routes", ["strategy_id", "decided_at"]
    )
    op.create_index(op.f("ix_failover_events_occurred_at"), "failover_events", ["occurred_at"])
    op.create_index(op.f("ix_orders_symbol_created_at"), "orders", ["symbol", "created_at"])
    op.execute(GRANT_FUNCTION)
    op.execute(CREATE_AND_GRANT)


def downgrade() -> None:
    op.execute(REVOKE)
    op.execute("DROP FUNCTION mbx_grant_dashboard()")
    op.drop_index(op.f("ix_orders_symbol_created_at"), table_name="orders")
    op.drop_index(op.f("ix_failover_events_occurred_at"), table_name="failover_events")
    op.drop_index(op.f("ix_multi_broker_routes_strategy_id_decided_at"), table_name="multi_broker_routes")
    op.drop_index(op.f("ix_multi_broker_routes_decided_at"), table_name="multi_broker_routes")
