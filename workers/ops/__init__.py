"""What operators do, shared by the `mbx` command line and the dashboard: read the stack's
health, read and change the live trading config (validated, compare-and-set, audited), and
inspect and replay dead letters. Errors are raised as ``OperatorError`` with a sentence an
operator can act on; each front end shows it its own way."""
