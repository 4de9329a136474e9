"""Initial schema: the PRD's multi-broker tables, the trading tables with broker_name, the inbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-21 14:06:33.797541
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('broker_accounts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('broker_name', sa.String(length=20), nullable=False),
    sa.Column('account_id', sa.String(length=50), nullable=False),
    sa.Column('currency', sa.String(length=3), server_default='USD', nullable=False),
    sa.Column('cash', sa.Numeric(precision=28, scale=10), nullable=False),
    sa.Column('buying_power', sa.Numeric(precision=28, scale=10), nullable=False),
    sa.Column('portfolio_value', sa.Numeric(precision=28, scale=10), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_broker_accounts')),
    sa.UniqueConstraint('broker_name', name=op.f('uq_broker_accounts_broker_name'))
    )
    op.create_table('inbox',
    sa.Column('message_id', sa.String(length=200), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('message_id', name=op.f('pk_inbox'))
    )
    op.create_table('multi_broker_connections',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('broker_name', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=20), server_default='disconnected', nullable=False),
    sa.Column('enabled', sa.Boolean(), server_default='true', nullable=False),
    sa.Column('asset_types', postgresql.JSONB(astext_type=sa.Text()), server_default='[]', nullable=False),
    sa.Column('fee_schedule', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('priority', sa.Integer(), server_default='100', nullable=False),
    sa.Column('last_connected_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_synced_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_multi_broker_connections')),
    sa.UniqueConstraint('broker_name', name=op.f('uq_multi_broker_connections_broker_name'))
    )
    op.create_table('multi_broker_routes',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('intent_id', sa.String(length=48), nullable=False),
    sa.Column('strategy_id', sa.String(length=64), nullable=False),
    sa.Column('broker_name', sa.String(length=20), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('rule', sa.String(length=100), nullable=False),
    sa.Column('score', sa.Double(), nullable=True),
    sa.Column('estimated_fee', sa.Numeric(precision=28, scale=10), nullable=True),
    sa.Column('fallback_chain', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('failover_from', sa.String(length=20), nullable=True),
    sa.Column('decision', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_multi_broker_routes')),
    sa.UniqueConstraint('intent_id', 'attempt', name=op.f('uq_multi_broker_routes_intent_id_attempt'))
    )
    op.create_index(op.f('ix_multi_broker_routes_broker_name_decided_at'), 'multi_broker_routes', ['broker_name', 'decided_at'], unique=False)
    op.create_table('orders',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('intent_id', sa.String(length=48), nullable=False),
    sa.Column('strategy_id', sa.String(length=64), nullable=False),
    sa.Column('broker_name', sa.String(length=20), nullable=True),
    sa.Column('client_order_id', sa.String(length=64), nullable=False),
    sa.Column('broker_order_id', sa.String(length=64), nullable=True),
    sa.Column('attempt', sa.Integer(), server_default='1', nullable=False),
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('asset_class', sa.String(length=10), nullable=False),
    sa.Column('side', sa.String(length=4), nullable=False),
    sa.Column('order_type', sa.String(length=12), nullable=False),
    sa.Column('quantity', sa.Numeric(precision=28, scale=10), nullable=True),
    sa.Column('notional', sa.Numeric(precision=28, scale=10), nullable=True),
    sa.Column('filled_quantity', sa.Numeric(precision=28, scale=10), server_default='0', nullable=False),
    sa.Column('average_price', sa.Numeric(precision=28, scale=10), nullable=True),
    sa.Column('fees', sa.Numeric(precision=28, scale=10), server_default='0', nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('report_seq', sa.Integer(), server_default='0', nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders')),
    sa.UniqueConstraint('broker_name', 'client_order_id', name=op.f('uq_orders_broker_name_client_order_id'), postgresql_nulls_not_distinct=True)
    )
    op.create_index(op.f('ix_orders_broker_name_status'), 'orders', ['broker_name', 'status'], unique=False)
    op.create_index(op.f('ix_orders_broker_name_symbol'), 'orders', ['broker_name', 'symbol'], unique=False)
    op.create_index(op.f('ix_orders_intent_id'), 'orders', ['intent_id'], unique=False)
    op.create_index(op.f('ix_orders_strategy_id_created_at'), 'orders', ['strategy_id', 'created_at'], unique=False)
    op.create_table('positions',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('broker_name', sa.String(length=20), nullable=False),
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('asset_class', sa.String(length=10), nullable=False),
    sa.Column('quantity', sa.Numeric(precision=28, scale=10), nullable=False),
    sa.Column('average_cost', sa.Numeric(precision=28, scale=10), nullable=False),
    sa.Column('market_price', sa.Numeric(precision=28, scale=10), nullable=True),
    sa.Column('market_value', sa.Numeric(precision=28, scale=10), nullable=True),
    sa.Column('unrealized_pnl', sa.Numeric(precision=28, scale=10), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_positions')),
    sa.UniqueConstraint('broker_name', 'symbol', name=op.f('uq_positions_broker_name_symbol'))
    )
    op.create_index(op.f('ix_positions_symbol'), 'positions', ['symbol'], unique=False)
    op.create_table('trade_logs',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('fill_id', sa.String(length=200), nullable=False),
    sa.Column('intent_id', sa.String(length=48), nullable=False),
    sa.Column('strategy_id', sa.String(length=64), nullable=False),
    sa.Column('broker_name', sa.String(length=20), nullable=False),
    sa.Column('broker_order_id', sa.String(length=64), nullable=False),
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('side', sa.String(length=4), nullable=False),
    sa.Column('quantity', sa.Numeric(precision=28, scale=10), nullable=False),
    sa.Column('price', sa.Numeric(precision=28, scale=10), nullable=False),
    sa.Column('fee', sa.Numeric(precision=28, scale=10), server_default='0', nullable=False),
    sa.Column('executed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trade_logs')),
    sa.UniqueConstraint('fill_id', name=op.f('uq_trade_logs_fill_id'))
    )
    op.create_index(op.f('ix_trade_logs_broker_name_symbol'), 'trade_logs', ['broker_name', 'symbol'], unique=False)
    op.create_index(op.f('ix_trade_logs_executed_at'), 'trade_logs', ['executed_at'], unique=False)
    op.create_index(op.f('ix_trade_logs_intent_id'), 'trade_logs', ['intent_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_trade_logs_intent_id'), table_name='trade_logs')
    op.drop_index(op.f('ix_trade_logs_executed_at'), table_name='trade_logs')
    op.drop_index(op.f('ix_trade_logs_broker_name_symbol'), table_name='trade_logs')
    op.drop_table('trade_logs')
    op.drop_index(op.f('ix_positions_symbol'), table_name='positions')
    op.drop_table('positions')
    op.drop_index(op.f('ix_orders_strategy_id_created_at'), table_name='orders')
    op.drop_index(op.f('ix_orders_intent_id'), table_name='orders')
    op.drop_index(op.f('ix_orders_broker_name_symbol'), table_name='orders')
    op.drop_index(op.f('ix_orders_broker_name_status'), table_name='orders')
    op.drop_table('orders')
    op.drop_index(op.f('ix_multi_broker_routes_broker_name_decided_at'), table_name='multi_broker_routes')
    op.drop_table('multi_broker_routes')
    op.drop_table('multi_broker_connections')
    op.drop_table('inbox')
    op.drop_table('broker_accounts')
