"""Postgres: the ORM models (the schema's source of truth for Alembic) and engine set-up."""
