"""``mbx report execution``: the monthly best-execution report from the audit trail in Postgres.

Registered on the ``mbx`` app as the ``report`` group by ``workers.cli``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from workers.cli.common import EXIT_OK, EXIT_USAGE, console, fail, resolve_database_url, settings_and_config
from workers.readmodel.execution_format import FORMATS, RENDERERS

if TYPE_CHECKING:
    from workers.readmodel.execution_report import ExecutionReport

report_app = typer.Typer(help="Reports over the audit trail.", no_args_is_help=True)


@report_app.command()
def execution(
    month: Annotated[str, typer.Option("--month", help="The month, YYYY-MM (UTC).")],
    output_format: Annotated[str, typer.Option("--format", help="md, csv or html.")] = "md",
    out: Annotated[Path | None, typer.Option("--out", help="Write the report to this file.")] = None,
) -> None:
    """Best execution per broker, order type and size bucket for one month: orders and notional,
    fill and cancel rates, time to acknowledgement and to first and complete fill, price
    improvement and effective spread against the quote the router decided with, fees per share
    and per 1,000 USD, failovers and rejections, and a routing table (directed by the strategy vs
    chosen by mbx). docs/operations.md defines every figure.

    Example: mbx report execution --month 2026-11 --format html --out 2026-11.html
    """
    # Loaded when the command runs: `mbx` itself loads no database library.
    from workers.readmodel.execution_report import BadMonth, month_window  # noqa: PLC0415

    if output_format not in FORMATS:
        fail(f"unknown format {output_format!r}: use one of {', '.join(FORMATS)}", EXIT_USAGE)
    try:
        month_window(month)
    except BadMonth as exc:
        fail(str(exc), EXIT_USAGE)
    settings, _ = settings_and_config()
    database = resolve_database_url(settings)
    report = asyncio.run(_read(settings.model_copy(update={"database_url": database}).sqlalchemy_url(), month))
    if report.empty:
        console.print(f"no orders or route decisions are recorded for {month}")
        raise typer.Exit(EXIT_OK)
    text = RENDERERS[output_format](report)
    if out is None:
        print(text, end="" if text.endswith("\n") else "\n")
        raise typer.Exit(EXIT_OK)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    console.print(f"wrote the {month} report to {out}")
    raise typer.Exit(EXIT_OK)


async def _read(url: str, month: str) -> ExecutionReport:
    from sqlalchemy.exc import DBAPIError  # noqa: PLC0415

    from workers.platform.db.engine import make_engine  # noqa: PLC0415
    from workers.readmodel.execution_report import execution_report  # noqa: PLC0415

    engine = make_engine(url, pool_size=1)
    try:
        return await execution_report(engine, month)
    except (OSError, DBAPIError) as exc:
        fail(f"cannot read the audit trail ({str(exc).splitlines()[0]})")
    finally:
        await engine.dispose()
