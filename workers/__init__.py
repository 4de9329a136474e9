"""mbx workers: router, executors, aggregator, and the tooling that runs them."""
