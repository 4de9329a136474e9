"""``mbx whatif``: recorded intents routed again with another config, through the router's own
``route()`` (``workers.router.whatif``), and what would have changed.

Registered on the ``mbx`` app by ``workers.cli``.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from workers.cli.common import EXIT_OK, EXIT_USAGE, console, fail, resolve_database_url, settings_and_config
from workers.domain.config import ConfigError, MbxConfig
from workers.platform.settings import load_config

if TYPE_CHECKING:
    from workers.router.whatif import Replayed, WhatIf

app = typer.Typer()

_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([mhdw])$")
_UNIT = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
DETAIL_FIELDS = (
    "intent_id",
    "strategy_id",
    "symbol",
    "old_broker",
    "old_rule",
    "new_broker",
    "new_rule",
    "old_fee",
    "new_fee",
    "old_latency_ms",
    "new_latency_ms",
    "changed",
    "new_reason",
    "old_hold",
    "new_hold",
)
SHOWN = 50
"""Decisions that change, and would-be rejections, printed one per line at most; the rest are in
the --csv or --json detail (a week of a busy desk is tens of thousands)."""


def parse_since(value: str) -> timedelta:
    """``30m``, ``12h``, ``7d``, ``2w`` as a duration; anything else is a usage error."""
    found = _SINCE.match(value.strip())
    if found is None or float(found[1]) <= 0:
        fail(f"--since {value!r}: expected a positive number and a unit m, h, d or w (e.g. 7d)", EXIT_USAGE)
    return timedelta(**{_UNIT[found[2]]: float(found[1])})


@app.command()
def whatif(
    config_file: Annotated[Path, typer.Option("--config", help="The config to replay with (YAML).")],
    since: Annotated[str, typer.Option(help="How far back: 30m, 12h, 7d, 2w.")] = "7d",
    strategy: Annotated[str | None, typer.Option(help="Only this strategy's intents.")] = None,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Write the per-intent detail as CSV.")] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write the summary and per-intent detail as JSON.")
    ] = None,
) -> None:
    """Replay the recorded intents of a window through the router's own routing function with
    another config, in the market and broker state each decision recorded, and print the
    decisions that change, the broker mix, fees and expected latency before and after, the orders
    that would have been rejected or held for approval and the effect per rule. Nothing is
    published or placed.

    Example: mbx whatif --config cheaper.yaml --since 7d --csv whatif.csv
    """
    window = parse_since(since)
    try:
        config = load_config(config_file)
    except ConfigError as exc:
        fail(f"invalid configuration: {exc}", EXIT_USAGE)
    settings, _ = settings_and_config()
    database = resolve_database_url(settings)
    url = settings.model_copy(update={"database_url": database}).sqlalchemy_url()
    start = datetime.now(UTC) - window
    with collector_paused():  # to the end: the summary and the detail walk the whole book again
        result, rejected_unrouted = asyncio.run(run_whatif(url, config, start, strategy))
        if not result.rows:
            scope = f" for strategy {strategy!r}" if strategy else ""
            fail(f"no routing decision is recorded since {start:%Y-%m-%d %H:%M} UTC{scope}: nothing to replay")
        print_whatif(result, rejected_unrouted)
        if csv_file is not None:
            write_csv(result, csv_file)
            console.print(f"detail written to {csv_file}")
        if json_file is not None:
            # Compact: with an indent, json encodes in Python instead of C, seconds on a big book.
            json_file.write_text(json.dumps(report(result, rejected_unrouted), default=str))
            console.print(f"summary and detail written to {json_file}")
    raise typer.Exit(EXIT_OK)


async def run_whatif(url: str, config: MbxConfig, since: datetime, strategy: str | None) -> tuple[WhatIf, int]:
    """The recorded book of the window replayed under ``config``; and how many intents were
    rejected with no decision to replay."""
    # Loaded when the command runs: `mbx` itself loads no database library.
    from workers.platform.db.engine import make_engine  # noqa: PLC0415
    from workers.readmodel.whatif import recorded_book  # noqa: PLC0415
    from workers.router.whatif import recorded_decision, replay  # noqa: PLC0415

    with collector_paused():
        engine = make_engine(url, pool_size=1)
        try:
            book = await recorded_book(engine, since, strategy)
        except OSError as exc:
            fail(f"cannot reach the database ({exc})")
        finally:
            await engine.dispose()
        try:
            decisions = [recorded_decision(row) for row in book.decisions]
        except ValidationError as exc:
            fail(f"a recorded decision could not be read ({exc.error_count()} problems): {exc.errors()[0]['msg']}")
        return replay(decisions, config, book.held_when_recorded()), book.rejected_unrouted


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a book is read and replayed: the replay makes
    millions of objects and no reference cycles worth collecting, and each pass of the collector
    walks every live object, the whole book; on 100,000 decisions those passes took about as long
    as the replay itself (bench/whatif_bench.py). Memory is still freed by reference counting."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def detail(result: WhatIf) -> list[dict[str, Any]]:
    return [_row(r) for r in result.rows]


def report(result: WhatIf, rejected_unrouted: int) -> dict[str, Any]:
    """What ``--json`` writes: the printed summary's figures (fees as exact decimal strings) and
    the per-intent detail. The dashboard's preview shows this report."""
    fees_before, fees_after = result.fees()
    latency_before, latency_after = result.latency()
    brokers = sorted(result.mix_before.keys() | result.mix_after.keys())
    return {
        "replayed": len(result.rows),
        "changed": len(result.changed),
        "rejected": len(result.rejected),
        "rejected_unrouted": rejected_unrouted,
        "mix": [{"broker": b, "before": result.mix_before[b], "after": result.mix_after[b]} for b in brokers],
        "fees_usd": {"before": str(fees_before), "after": str(fees_after)},
        "latency_ms": {"before": latency_before, "after": latency_after},
        "rule_effect": [asdict(effect) for effect in result.rule_effect()],
        "held": len(result.held),
        "held_before": len(result.held_before),
        "hold_effect": [asdict(effect) for effect in result.hold_effect()],
        "assumptions": list(result.assumptions),
        "detail": detail(result),
    }


def _row(replayed: Replayed) -> dict[str, Any]:
    return {name: getattr(replayed, name) for name in DETAIL_FIELDS}  # ``changed`` is a property


def write_csv(result: WhatIf, path: Path) -> None:
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=DETAIL_FIELDS)
        writer.writeheader()
        writer.writerows(detail(result))


def print_whatif(result: WhatIf, rejected_unrouted: int) -> None:
    rows, changed = result.rows, result.changed
    console.print(f"[bold]{len(rows)}[/bold] recorded intents replayed; [bold]{len(changed)}[/bold] decisions change")
    if changed:
        table = Table("intent", "symbol", "before", "after", title="Decisions that change")
        for r in changed[:SHOWN]:
            after = f"{r.new_broker} ({r.new_rule})" if r.new_broker is not None else f"[red]{r.new_rule}[/red]"
            table.add_row(r.intent_id, r.symbol, f"{r.old_broker} ({r.old_rule})", after)
        console.print(table)
        _more(len(changed), "changed decisions")
    mix = Table("broker", "before", "after", title="Broker mix")
    for broker in sorted(result.mix_before.keys() | result.mix_after.keys()):
        mix.add_row(broker, str(result.mix_before[broker]), str(result.mix_after[broker]))
    console.print(mix)
    fees_before, fees_after = result.fees()
    latency_before, latency_after = result.latency()
    console.print(
        f"estimated fees (intents routed in both): {fees_before:.4f} -> {fees_after:.4f} USD; "
        f"mean expected latency: {_ms(latency_before)} -> {_ms(latency_after)}"
    )
    rejected = result.rejected
    for r in rejected[:SHOWN]:
        console.print(f"[red]would be rejected[/red]: {r.intent_id} ({r.symbol}): {r.new_reason}")
    _more(len(rejected), "would-be rejections")
    print_holds(result)
    effects = result.rule_effect()
    if effects:
        table = Table("rule", "decisions before", "after", title="Per-rule effect")
        for effect in effects:
            table.add_row(effect.rule, str(effect.before), str(effect.after))
        console.print(table)
    if rejected_unrouted:
        console.print(f"{rejected_unrouted} intents in the window were rejected with no decision: not replayed")
    console.print("assumptions:")
    for assumption in result.assumptions:
        console.print(f"  - {assumption}")


def print_holds(result: WhatIf) -> None:
    """The intents the config would hold for approval, beside those held when recorded."""
    held, before = result.held, result.held_before
    if not held and not before:
        return
    console.print(
        f"[bold]{len(held)}[/bold] would be held for approval before routing ({len(before)} held when recorded)"
    )
    table = Table("approval rule", "held when recorded", "would hold", title="Held for approval")
    for effect in result.hold_effect():
        table.add_row(effect.rule, str(effect.before), str(effect.after))
    console.print(table)
    for r in held[:SHOWN]:
        then = f"held by {r.old_hold} when recorded" if r.old_hold else "routed at once when recorded"
        console.print(f"[yellow]would be held[/yellow] by {r.new_hold}: {r.intent_id} ({r.symbol}); {then}")
    _more(len(held), "would-be holds")


def _more(count: int, what: str) -> None:
    if count > SHOWN:
        console.print(f"... {count - SHOWN} more {what}: see the --csv or --json detail")


def _ms(value: float | None) -> str:
    return f"{value:.1f} ms" if value is not None else "n/a"
