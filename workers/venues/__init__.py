"""Broker adapters ("venues" in code, to keep clear of FastStream's NATS broker)."""
