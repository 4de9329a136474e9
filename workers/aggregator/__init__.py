"""The aggregator: writes everything that comes back to Postgres, idempotently, in batches."""
