"""The `mbx` command line: ``workers.cli.main`` builds the app from one module per command group."""
