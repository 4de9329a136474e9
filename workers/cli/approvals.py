"""``mbx approvals``, ``mbx approve``, ``mbx deny``: the approval queue (config ``approvals``).

A decision is written to the hold's record by compare-and-set (``workers.ops.approvals``), so one
decision stands whoever is first; the router then routes or rejects the intent. The operator's
name goes into the audit trail: ``--by``, else ``MBX_OPERATOR``, else the login name. A refused
decision (already decided, expired, a second approval by the same operator, no such hold) is one
line and exit 2. Registered on the ``mbx`` app by ``workers.cli``.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from workers.cli.common import EXIT_OK, EXIT_USAGE, connect, console, fail, resolve_nats_url, settings_and_config

if TYPE_CHECKING:  # the operator actions load on use: `mbx --help` stays quick
    from workers.ops.approval_queue import QueueEntry

app = typer.Typer()

Note = Annotated[str, typer.Option(help="Why, for the audit trail (shown with the decision).")]
By = Annotated[
    str | None,
    typer.Option("--by", help="Who decides (default: MBX_OPERATOR, else your login name)."),
]


@app.command()
def approvals(
    every: Annotated[bool, typer.Option("--all", help="Also the holds already decided (kept 30 days).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON hold per line.")] = False,
) -> None:
    """The orders held for an operator's approval: strategy, order, estimated notional, the rule
    that holds it, approvals given of those needed (and by whom), when it was held and how long
    is left before it expires.

    Example: mbx approvals
             mbx approvals --all --json
    """
    settings, _ = settings_and_config()
    url = resolve_nats_url(settings)

    async def load() -> list[QueueEntry]:
        from workers.ops.approval_queue import queue_entry  # noqa: PLC0415
        from workers.ops.approvals import held  # noqa: PLC0415
        from workers.platform.bus import jetstream  # noqa: PLC0415

        nc = await connect(url)
        try:
            holds = await held(jetstream(nc), settings.subjects, every)
        finally:
            await nc.close()
        now = datetime.now(UTC)
        return [queue_entry(h, now) for h in holds]

    entries = asyncio.run(load())
    if as_json:
        for entry in entries:
            print(json.dumps(entry.as_json()))
        raise typer.Exit(EXIT_OK)
    if not entries:
        console.print("nothing is held for approval" + ("" if every else " (--all: also those decided)"))
        raise typer.Exit(EXIT_OK)
    console.print(_table(entries, every))
    raise typer.Exit(EXIT_OK)


def _table(entries: list[QueueEntry], every: bool) -> Table:
    from workers.ops.approval_queue import money  # noqa: PLC0415

    waiting = sum(1 for e in entries if str(e.state) == "pending")
    table = Table(title=f"{waiting} held for approval" + (f", {len(entries) - waiting} decided" if every else ""))
    columns = ["intent", "strategy", "symbol", "side", "size", "est. notional", "rule", "approvals", "held at"]
    for column in [*columns, "expires in", *(["state"] if every else [])]:
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(
            e.intent_id,
            e.strategy_id,
            e.symbol,
            e.side,
            e.size,
            money(e.estimated_notional) or "no quote",
            e.rule,
            e.approvals,
            f"{e.held_at.astimezone():%Y-%m-%d %H:%M:%S}",
            e.expires_in,
            *([str(e.state)] if every else []),
        )
    return table


@app.command()
def approve(
    intent_id: Annotated[str, typer.Argument(help="The held intent (mbx approvals lists them).")],
    note: Note = "",
    by: By = None,
) -> None:
    """Approve a held order; the last approval it needs makes the router route it (at the quote,
    risk limits and kill switches of that moment). With two approvers, the second must be
    another operator.

    Example: mbx approve desk-3f2a9c1e7b4d --note "size checked with the PM"
    """
    raise typer.Exit(_decide("approve", intent_id, note, by))


@app.command()
def deny(
    intent_id: Annotated[str, typer.Argument(help="The held intent (mbx approvals lists them).")],
    note: Note = "",
    by: By = None,
) -> None:
    """Deny a held order: it ends rejected (approval_denied) with your name and note.

    Example: mbx deny desk-3f2a9c1e7b4d --note "over the desk's limit today"
    """
    raise typer.Exit(_decide("deny", intent_id, note, by))


def operator_name(by: str | None) -> str:
    """``--by``, else ``MBX_OPERATOR``, else the login name."""
    if by is not None:
        return by
    named = os.environ.get("MBX_OPERATOR", "").strip()
    if named:
        return named
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in this environment (a container without a user)
        fail("say who decides: --by NAME (or set MBX_OPERATOR)", EXIT_USAGE)


def _decide(verb: str, intent_id: str, note: str, by: str | None) -> int:
    settings, _ = settings_and_config()
    url = resolve_nats_url(settings)
    operator = operator_name(by)

    async def decide() -> Any:
        from workers.ops import approvals as ops  # noqa: PLC0415
        from workers.ops.errors import OperatorError  # noqa: PLC0415
        from workers.platform.bus import jetstream  # noqa: PLC0415

        action = ops.approve if verb == "approve" else ops.deny
        nc = await connect(url)
        try:
            return await action(jetstream(nc), settings.subjects, intent_id, operator, note)
        except OperatorError as exc:
            fail(str(exc), EXIT_USAGE)
        finally:
            await nc.close()

    decided = asyncio.run(decide())
    colour = "green" if verb == "approve" else "red"
    console.print(f"[{colour}]{decided.message}[/{colour}]")
    return EXIT_OK
