"""``mbx dlq list|show|replay|purge``: inspect dead letters and send them back.

A replay republishes the original payload to the original subject under a fresh message id,
keeping the correlation headers, with ``Mbx-Replay`` set to the dead letter's id; the workers
then check whether the intent was already acted on, so a replay never executes anything twice.
Every replay is recorded in Postgres (``dlq_replays``). Registered on the ``mbx`` app by
``workers.cli``.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from contracts import DeadLetterStage, Subjects
from workers.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    connect,
    console,
    err,
    fail,
    resolve_database_url,
    resolve_nats_url,
    settings_and_config,
)

if TYPE_CHECKING:  # the operator actions load on use: `mbx --help` and every worker start stay quick
    from workers.ops.dlq import Filters, Letter

dlq = typer.Typer(help="Dead letters: list, show, replay, purge.", no_args_is_help=True)


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"--{name}: {value!r} is not an ISO date or time (e.g. 2026-11-21T09:31)", EXIT_USAGE)
    return moment if moment.tzinfo else moment.astimezone()


Stage = Annotated[DeadLetterStage | None, typer.Option(help="router, executor, aggregator or parents.")]
Subject = Annotated[str | None, typer.Option(help="Original subject, glob (mbx.orders.intent.*).")]
Error = Annotated[str | None, typer.Option(help="Text the error contains (any case).")]
Since = Annotated[str | None, typer.Option(help="Dead-lettered at or after (ISO time).")]
Until = Annotated[str | None, typer.Option(help="Dead-lettered at or before (ISO time).")]
Ids = Annotated[list[str] | None, typer.Option("--id", help="Letter id, intent id or sequence (repeat).")]


def _filters(
    stage: DeadLetterStage | None,
    subject: str | None,
    error: str | None,
    since: str | None,
    until: str | None,
    ids: list[str] | None,
) -> Filters:
    from workers.ops.dlq import Filters  # noqa: PLC0415

    return Filters(stage, subject, error, _time(since, "since"), _time(until, "until"), tuple(ids or ()))


def _load(filters: Filters) -> tuple[list[Letter], str, Subjects]:
    settings, _ = settings_and_config()
    url = resolve_nats_url(settings)

    async def load() -> list[Letter]:
        from workers.ops.dlq import find_letters  # noqa: PLC0415

        nc = await connect(url)
        try:
            return await find_letters(nc.jetstream(), settings.subjects, filters)
        finally:
            await nc.close()

    return asyncio.run(load()), url, settings.subjects


def _select(verb: str, filters: Filters, everything: bool) -> tuple[list[Letter], str, Subjects]:
    """The letters a destructive command acts on: never all of them by accident."""
    if filters.empty and not everything:
        fail(
            f"say which dead letters to {verb} (--stage, --subject, --error, --since, --until, --id) or --all",
            EXIT_USAGE,
        )
    return _load(filters)


@dlq.command("list")
def list_letters(
    stage: Stage = None,
    subject: Subject = None,
    error: Error = None,
    since: Since = None,
    until: Until = None,
    ids: Ids = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON dead letter per line.")] = False,
) -> None:
    """List dead letters with their reasons.

    Example: mbx dlq list --stage executor --error "gave up" --since 2026-11-21T09:30
    """
    letters, _, _ = _load(_filters(stage, subject, error, since, until, ids))
    if as_json:
        for item in letters:
            print(json.dumps({"seq": item.seq, **item.letter.model_dump(mode="json")}))
        raise typer.Exit(EXIT_OK)
    table = Table(title=f"{len(letters)} dead letters")
    for column in ("seq", "stage", "subject", "intent", "tries", "when", "error"):
        table.add_column(column, overflow="fold")
    for item in letters:
        d = item.letter
        table.add_row(
            str(item.seq),
            str(d.stage),
            d.original_subject,
            d.correlation_id or "-",
            str(d.delivery_count),
            f"{d.created_at:%Y-%m-%d %H:%M:%S}",
            d.error[:160],
        )
    console.print(table)
    raise typer.Exit(EXIT_OK)


@dlq.command()
def show(letter: Annotated[str, typer.Argument(help="Sequence, letter id or intent id.")]) -> None:
    """Everything about one dead letter: subject, headers, payload, error, deliveries.

    Example: mbx dlq show 42
    """
    from workers.ops.dlq import Filters  # noqa: PLC0415

    letters, _, _ = _load(Filters(ids=(letter,)))
    if not letters:
        fail(f"no dead letter {letter!r}")
    for item in letters:
        d = item.letter
        console.print(f"[bold]dead letter {item.seq}[/bold] ({d.message_id}), stage {d.stage}")
        console.print(f"  subject     {d.original_subject}")
        console.print(f"  when        {d.created_at:%Y-%m-%d %H:%M:%S %Z}, after {d.delivery_count} deliveries")
        console.print(f"  error       {d.error}")
        for name, value in sorted(d.original_headers.items()):
            console.print(f"  header      {name}: {value}")
        size = f"{d.payload_size:,} bytes, sha256 {d.payload_sha256[:16]}"
        cut = f", first {len(d.payload):,} characters shown" if d.payload_truncated else ""
        console.print(f"  payload     {size}, {d.payload_encoding}{cut}")
        try:
            console.print_json(d.payload)
        except ValueError:
            console.print(f"  payload     {d.payload[:2000]!r}" + (" ..." if len(d.payload) > 2000 else ""))
    raise typer.Exit(EXIT_OK)


@dlq.command()
def replay(
    stage: Stage = None,
    subject: Subject = None,
    error: Error = None,
    since: Since = None,
    until: Until = None,
    ids: Ids = None,
    everything: Annotated[bool, typer.Option("--all", help="Every dead letter (no filter).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be replayed.")] = False,
) -> None:
    """Republish dead letters to their original subjects and record each replay in Postgres.

    Fresh message ids, the same correlation headers; an intent that already executed is not
    executed again.

    Example: mbx dlq replay --stage executor --error "gave up" --dry-run
    """
    letters, url, _ = _select("replay", _filters(stage, subject, error, since, until, ids), everything)
    if not letters:
        console.print("no dead letter matches")
        raise typer.Exit(EXIT_OK)
    from workers.ops.dlq import replayable  # noqa: PLC0415

    letters, cut = replayable(letters)
    for item in cut:
        err.print(
            f"skipping {item.seq}: only the first {len(item.letter.payload):,} of {item.letter.payload_size:,} bytes "
            "were kept, so it cannot be replayed"
        )
    if not letters:
        fail("nothing to replay: every matching dead letter was cut short")
    if dry_run:
        for item in letters:
            console.print(
                f"would replay {item.seq} to {item.letter.original_subject} ({item.letter.correlation_id or '-'})"
            )
        console.print(f"dry run: {len(letters)} dead letters would be replayed")
        raise typer.Exit(EXIT_OK)
    settings, _ = settings_and_config()
    database = settings.model_copy(update={"database_url": resolve_database_url(settings)}).sqlalchemy_url()
    replayed = asyncio.run(_replay(letters, url, database))
    console.print(f"replayed {replayed} of {len(letters)} dead letters (recorded in dlq_replays)")
    raise typer.Exit(EXIT_OK if replayed == len(letters) else EXIT_FAILURE)


async def _replay(letters: list[Letter], url: str, database: str) -> int:
    from workers.ops.dlq import replay as replay_letters  # noqa: PLC0415
    from workers.ops.errors import OperatorError  # noqa: PLC0415
    from workers.platform.db.engine import make_engine  # noqa: PLC0415

    engine = make_engine(database, pool_size=1)
    try:
        nc = await connect(url)
        try:
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("replaying", total=len(letters))
                return await replay_letters(
                    nc.jetstream(),
                    engine,
                    letters,
                    os.environ.get("USER", "operator"),
                    on_each=lambda _item: progress.advance(task),
                )
        except OperatorError as exc:
            fail(str(exc))
        finally:
            await nc.close()
    finally:
        await engine.dispose()


@dlq.command()
def purge(
    stage: Stage = None,
    subject: Subject = None,
    error: Error = None,
    since: Since = None,
    until: Until = None,
    ids: Ids = None,
    everything: Annotated[bool, typer.Option("--all", help="Every dead letter (no filter).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be deleted.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete dead letters from the DLQ stream (replay records in Postgres stay).

    Example: mbx dlq purge --stage router --until 2026-11-01 --yes
    """
    letters, url, subjects = _select("purge", _filters(stage, subject, error, since, until, ids), everything)
    if dry_run or not letters:
        console.print(f"{'dry run: ' if dry_run else ''}{len(letters)} dead letters would be deleted")
        raise typer.Exit(EXIT_OK)
    if not yes and not typer.confirm(f"delete {len(letters)} dead letters?"):
        raise typer.Exit(EXIT_FAILURE)

    async def delete() -> None:
        nc = await connect(url)
        try:
            js = nc.jetstream()
            for item in letters:
                await js.delete_msg(subjects.stream_name("DLQ"), item.seq)
        finally:
            await nc.close()

    asyncio.run(delete())
    console.print(f"deleted {len(letters)} dead letters")
    raise typer.Exit(EXIT_OK)
