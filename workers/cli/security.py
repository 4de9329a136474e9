"""``mbx security init``: NATS users per role, their permissions and passwords, and TLS.
Registered on the ``mbx`` app by ``workers.cli``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workers.cli.common import EXIT_USAGE, console, fail, settings_and_config

security_app = typer.Typer(help="NATS users, permissions and TLS for a secured deployment.", no_args_is_help=True)

DEFAULT_STRATEGIES = ["cli"]


def default_directory(data_dir: Path) -> Path:
    return data_dir / "security"


@security_app.command("init")
def init(
    strategy: Annotated[
        list[str] | None,
        typer.Option("--strategy", help="A strategy id that gets its own user (repeat; default: cli)."),
    ] = None,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Where to write (default: <data dir>/security).")
    ] = None,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Another name or address the servers are reached by (repeat)."),
    ] = None,
    no_tls: Annotated[bool, typer.Option("--no-tls", help="Users and permissions only, no TLS.")] = False,
    cert: Annotated[Path | None, typer.Option(help="Your server certificate (with --key and --ca).")] = None,
    key: Annotated[Path | None, typer.Option(help="Your server certificate's key.")] = None,
    ca: Annotated[Path | None, typer.Option(help="The CA that signed your certificates.")] = None,
) -> None:
    """Write a NATS server config with one user per role (router, each executor, aggregator,
    each strategy, operator), each allowed only the subjects it uses; a password file per user
    (mode 600); and TLS from a new development CA unless --cert/--key/--ca are given.
    `mbx up --secure` runs with it.

    Example: mbx security init --strategy momentum --strategy meanrev
    """
    from workers.ops import security  # noqa: PLC0415
    from workers.ops.errors import OperatorError  # noqa: PLC0415

    settings, config = settings_and_config()
    target = directory or default_directory(settings.data_dir)
    try:
        setup = security.init(
            target,
            settings.subjects,
            strategy or DEFAULT_STRATEGIES,
            config.enabled_brokers(),
            tls=not no_tls,
            hosts=host or [],
            cert_file=cert,
            key_file=key,
            ca_file=ca,
        )
    except OperatorError as exc:
        fail(str(exc), EXIT_USAGE)
    console.print(f"NATS server config: [bold]{setup.server_config}[/bold] (include it from the server's config)")
    console.print(f"users ({len(setup.users)}), each with a password file of mode 600 under {target / 'users'}:")
    for user in setup.users:
        console.print(f"  {user}")
    if setup.ca_file:
        console.print(f"TLS: CA {setup.ca_file}, server certificate {setup.cert_file}")
    console.print(
        "Each process connects as its role: MBX_NATS_USER=<user>, MBX_NATS_PASSWORD_FILE=<its file>"
        + (", MBX_NATS_CA_FILE=<the CA>" if setup.ca_file else "")
        + ". `mbx up --secure` does this for every worker."
    )
