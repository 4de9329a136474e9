"""Shared infrastructure: settings, logging, the bus and the worker runtime, the database, the
order ledger in KV, failpoints, and the topology (durable consumers and private buckets)."""
