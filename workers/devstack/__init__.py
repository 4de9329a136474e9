"""Embedded servers for development and tests: nats-server and PostgreSQL from their wheels."""
