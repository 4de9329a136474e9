"""`mbx import-legacy`: bring a single-broker database into the audit trail."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from contracts import (
    BrokerName,
)
from workers.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    console,
    err,
    fail,
    resolve_database_url,
    settings_and_config,
)

app = typer.Typer()


@app.command("import-legacy")
def import_legacy(
    source: Annotated[str, typer.Option("--from", help="SQLAlchemy URL of the single-broker database.")],
    broker: Annotated[BrokerName, typer.Option(help="The broker every imported row belongs to.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read, map and report; write nothing.")] = False,
    backup_dir: Annotated[Path, typer.Option(help="Where the source's backup goes.")] = Path(".mbx/backups"),
) -> None:
    """Import a single-broker database (orders, positions, trade_logs) with every row tagged with
    BROKER; backs the source up first and ends with a validation report.

    Example: mbx import-legacy --from sqlite:///data/trading.db --broker alpaca --dry-run
    """
    from sqlalchemy import create_engine  # noqa: PLC0415
    from sqlalchemy.exc import ArgumentError, OperationalError  # noqa: PLC0415

    from workers.legacy import LegacyError  # noqa: PLC0415
    from workers.legacy import import_legacy as run_import  # noqa: PLC0415

    settings, _ = settings_and_config()
    target_url = resolve_database_url(settings)
    target = create_engine(settings.model_copy(update={"database_url": target_url}).sqlalchemy_url())
    try:
        report = run_import(
            source,
            target,
            broker,
            dry_run=dry_run,
            backup_dir=backup_dir,
            progress=lambda step: console.print(f"[dim]{step}[/dim]"),
        )
    except ArgumentError as exc:
        fail(f"--from: {exc}", EXIT_USAGE)
    except (LegacyError, OperationalError) as exc:
        fail(str(exc).splitlines()[0])
    finally:
        target.dispose()
    for path in report.backup:
        console.print(f"backup: {path}")
    title = "dry run: nothing written" if dry_run else "imported"
    console.print(f"[bold]{title}[/bold] ({broker})")
    console.print(
        f"  {'table':<11} {'read':>6} {'written':>8} {'present':>8} {'refused':>8}  "
        f"{'quantity src/target':>32}  value src/target"
    )
    for name, t in report.tables.items():
        console.print(
            f"  {name:<11} {t.read:>6} {t.written:>8} {t.already_there:>8} {t.refused:>8}  "
            f"{f'{t.source_quantity}/{t.target_quantity}':>32}  {t.source_value}/{t.target_value}"
            + ("" if t.matches else "  [red]MISMATCH[/red]")
        )
    for error in report.errors:
        err.print(f"[red]not imported[/red]: {error}")
    if dry_run:
        console.print("validation: dry run, the target sums above are what the import would write")
    elif report.errors:
        fail(f"validation: {len(report.errors)} source rows were not imported (listed above)")
    elif report.matches:
        console.print("[green]validation: every table matches[/green]")
    else:
        fail("validation: the target does not match the source (see MISMATCH above)")
    raise typer.Exit(EXIT_OK)
