"""The SQL that readers share: the portfolio, one intent's story, execution quality.

The aggregator's request/reply API, the CLI and the dashboard read Postgres through these
modules, so no reader imports a worker.
"""
