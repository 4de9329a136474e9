"""``mbx config show|validate|set``: the live trading config in KV (rules, weights, fee
schedules, priorities, kill switches), validated before it is written, with an audit row in
Postgres for every change. Registered on the ``mbx`` app by ``workers.cli``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from pydantic import ValidationError

from workers.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    connect,
    console,
    fail,
    resolve_database_url,
    resolve_nats_url,
    settings_and_config,
    startable,
)
from workers.domain.config import ConfigError, MbxConfig
from workers.platform.settings import Settings, load_config

if TYPE_CHECKING:
    from workers.ops.config import LiveConfig

config_app = typer.Typer(help="The live trading config: show, validate, set.", no_args_is_help=True)


async def _live(settings: Settings, url: str) -> LiveConfig:
    from workers.ops.config import read_live_config  # noqa: PLC0415

    nc = await connect(url)
    try:
        return await read_live_config(nc.jetstream(), settings.subjects)
    finally:
        await nc.close()


@config_app.command("show")
def show(as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML.")] = False) -> None:
    """The live trading config the router uses now (credentials are never stored there).

    Example: mbx config show
    """
    settings, _ = settings_and_config()
    current = asyncio.run(_live(settings, resolve_nats_url(settings)))
    live, revision, refusal = current.config, current.revision, current.refusal
    if live is None:
        fail("no live config yet: the router seeds it from mbx.yaml when it first starts")
    if as_json:
        console.print_json(json.dumps(live))
    else:
        console.print(f"# live config, revision {revision}")
        console.print(yaml.safe_dump(live, sort_keys=False), markup=False, highlight=False)
    if refusal:
        console.print(f"[yellow]the router refused the last change[/yellow]: {refusal}")
    raise typer.Exit(EXIT_OK)


@config_app.command("validate")
def validate(
    path: Annotated[Path, typer.Argument(help="A YAML config file.")],
    live: Annotated[
        bool, typer.Option("--live", help="Check as `mbx up --live` would (or MBX_LIVE=1): real money allowed.")
    ] = False,
) -> None:
    """Check a config file without applying it, with every check `mbx up` makes before it
    starts (bounds, adapter and quote source names, keys, real money); every error names the key.

    Example: mbx config validate mbx.yaml
    """
    try:
        config = startable(load_config(path), live or Settings().live)
    except ConfigError as exc:
        fail(f"invalid: {exc}", EXIT_USAGE)
    except (ValidationError, ValueError) as exc:
        fail(f"invalid environment: {exc}", EXIT_USAGE)
    console.print(
        f"[green]valid[/green]: {len(config.enabled_brokers())} brokers enabled, "
        f"{len(config.routing.rules)} routing rules, weights {config.routing.weights.model_dump()}"
    )
    raise typer.Exit(EXIT_OK)


def _parsed(changes: list[str]) -> dict[str, Any]:
    """``dotted.key=value`` changes as {key: value}; a malformed one fails before anything is read."""
    from workers.ops.config import parse_change  # noqa: PLC0415
    from workers.ops.errors import OperatorError  # noqa: PLC0415

    try:
        return dict(parse_change(change) for change in changes)
    except OperatorError as exc:
        fail(str(exc), EXIT_USAGE)


@config_app.command("set")
def set_config(
    changes: Annotated[list[str] | None, typer.Argument(help="dotted.key=value changes to the live config.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Replace the live config with this file.")] = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "",
) -> None:
    """Change the live trading config: validated first, written to KV (the router applies it
    within a second, no restart), and recorded in Postgres (config_changes).

    Example: mbx config set risk.kill_switches.brokers='[schwab]' routing.weights.cost=0.5
             mbx config set --file mbx.yaml --reason "new fee tiers"
    """
    settings, _ = settings_and_config()
    if bool(changes) == bool(file):
        fail("give either dotted.key=value changes or --file", EXIT_USAGE)
    url = resolve_nats_url(settings)
    from workers.ops.config import changed  # noqa: PLC0415

    if file is not None:
        try:
            replacement = load_config(file)
        except ConfigError as exc:
            fail(f"invalid: {exc}", EXIT_USAGE)
        summary = f"replaced from {file}"
        change: Callable[[dict[str, Any]], MbxConfig] = lambda _live: replacement  # noqa: E731
    else:
        change = changed(_parsed(changes or []))
        summary = "; ".join(changes or [])
    if reason:
        summary += f" ({reason})"
    database = settings.model_copy(update={"database_url": resolve_database_url(settings)}).sqlalchemy_url()
    revision = asyncio.run(_write(settings, url, database, change, summary))
    console.print(f"[green]applied[/green]: live config revision {revision} ({summary})")
    raise typer.Exit(EXIT_OK)


async def _write(
    settings: Settings, url: str, database: str, change: Callable[[dict[str, Any]], MbxConfig], summary: str
) -> int:
    """Write the change with compare-and-set, then record it in ``config_changes``."""
    from workers.ops.config import change_config  # noqa: PLC0415
    from workers.ops.errors import InvalidChange, OperatorError  # noqa: PLC0415
    from workers.platform.bus import jetstream  # noqa: PLC0415
    from workers.platform.db.engine import make_engine  # noqa: PLC0415

    engine = make_engine(database, pool_size=1)
    try:
        nc = await connect(url)
        try:
            return await change_config(
                jetstream(nc),
                engine,
                settings.subjects,
                change,
                summary=summary,
                operator=os.environ.get("USER", "operator"),
            )
        except InvalidChange as exc:
            fail(f"invalid: {exc}", EXIT_USAGE)
        except (ConfigError, OperatorError) as exc:
            fail(str(exc))
        finally:
            await nc.close()
    finally:
        await engine.dispose()
