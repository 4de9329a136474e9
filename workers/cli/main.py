"""``mbx``: the operator command line. Each command group lives in its own module."""

from __future__ import annotations

import sys

import typer

from workers.cli import approvals, auth, config, dlq, explain, legacy, orders, report, security, sim, stack, views
from workers.cli.parent_orders import with_split_value
from workers.cli.whatif import app as whatif_app

app = typer.Typer(
    help="mbx: smart multi-broker execution.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for group in (stack, orders, approvals, views, explain, sim, legacy):
    app.registered_commands += group.app.registered_commands
app.registered_commands += whatif_app.registered_commands
app.add_typer(dlq.dlq, name="dlq")
app.add_typer(config.config_app, name="config")
app.add_typer(auth.auth_app, name="auth")
app.add_typer(security.security_app, name="security")
app.add_typer(report.report_app, name="report")


def main() -> None:
    try:
        app(args=with_split_value(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
