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
from typing import Annotated, Any

import typer
import yaml

from workers.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    audit_engine,
    connect,
    console,
    fail,
    resolve_database_url,
    resolve_nats_url,
    settings_and_config,
)
from workers.domain.config import ConfigError, MbxConfig, parse_config
from workers.platform.settings import Settings, load_config

config_app = typer.Typer(help="The live trading config: show, validate, set.", no_args_is_help=True)


async def _live(settings: Settings, url: str) -> tuple[dict[str, Any] | None, int, str]:
    """(live config as stored, its revision, the router's last refusal) from KV."""
    from nats.js.errors import BucketNotFoundError, KeyNotFoundError  # noqa: PLC0415

    from workers.domain.keys import CONFIG_KEY, CONFIG_STATUS_KEY  # noqa: PLC0415

    nc = await connect(url)
    try:
        try:
            kv = await nc.jetstream().key_value(settings.subjects.config_bucket)
        except BucketNotFoundError:
            return None, 0, ""
        try:
            entry = await kv.get(CONFIG_KEY)
            live, revision = json.loads(entry.value or b"{}"), int(entry.revision or 0)
        except KeyNotFoundError:
            live, revision = None, 0
        try:
            refusal = (await kv.get(CONFIG_STATUS_KEY)).value or b""
        except KeyNotFoundError:
            refusal = b""
        return live, revision, refusal.decode()
    finally:
        await nc.close()


@config_app.command("show")
def show(as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML.")] = False) -> None:
    """The live trading config the router uses now (credentials are never stored there).

    Example: mbx config show
    """
    settings, _ = settings_and_config()
    live, revision, refusal = asyncio.run(_live(settings, resolve_nats_url(settings)))
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
def validate(path: Annotated[Path, typer.Argument(help="A YAML config file.")]) -> None:
    """Check a config file without applying it; every error names the bad key.

    Example: mbx config validate mbx.yaml
    """
    try:
        config = load_config(path)
    except ConfigError as exc:
        fail(f"invalid: {exc}", EXIT_USAGE)
    console.print(
        f"[green]valid[/green]: {len(config.enabled_brokers())} brokers enabled, "
        f"{len(config.routing.rules)} routing rules, weights {config.routing.weights.model_dump()}"
    )
    raise typer.Exit(EXIT_OK)


def _apply(base: dict[str, Any], change: str) -> str:
    """Apply ``dotted.key=value`` (value in YAML) to ``base``; returns the key."""
    key, sep, raw = change.partition("=")
    if not sep or not key:
        fail(f"{change!r}: expected dotted.key=value (e.g. risk.kill_switches.all=true)", EXIT_USAGE)
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as exc:
        fail(f"{key}: the value is not valid YAML ({exc})", EXIT_USAGE)
    node = base
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            fail(f"{key}: {part} is not a section", EXIT_USAGE)
        node = child
    node[parts[-1]] = value
    return key


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
    replacement: MbxConfig | None = None
    if file is not None:
        try:
            replacement = load_config(file)
        except ConfigError as exc:
            fail(f"invalid: {exc}", EXIT_USAGE)
        summary = f"replaced from {file}"
    else:
        for change in changes or []:
            _apply({}, change)  # a malformed change fails before anything is read
        summary = "; ".join(changes or [])
    if reason:
        summary += f" ({reason})"

    def change_live(live: dict[str, Any]) -> MbxConfig:
        """The new config from the live one as it stands at each (re)try of the write."""
        if replacement is not None:
            return replacement
        for change in changes or []:
            _apply(live, change)
        try:
            return parse_config(live, "the changed config")
        except ConfigError as exc:
            fail(f"invalid: {exc}", EXIT_USAGE)

    database = settings.model_copy(update={"database_url": resolve_database_url(settings)}).sqlalchemy_url()
    revision = asyncio.run(_write(settings, url, database, change_live, summary))
    console.print(f"[green]applied[/green]: live config revision {revision} ({summary})")
    raise typer.Exit(EXIT_OK)


async def _write(
    settings: Settings, url: str, database: str, change: Callable[[dict[str, Any]], MbxConfig], summary: str
) -> int:
    """Write the change with compare-and-set, then record it in ``config_changes``."""
    from sqlalchemy import insert  # noqa: PLC0415

    from workers.domain.config import config_to_json  # noqa: PLC0415
    from workers.platform.db.models import ConfigChange  # noqa: PLC0415
    from workers.platform.live_config import change_live_config  # noqa: PLC0415

    engine = await audit_engine(database, "the change")
    try:
        nc = await connect(url)
        try:
            revision, config = await change_live_config(nc.jetstream(), settings.subjects, change)
        except ConfigError as exc:
            fail(str(exc))
        finally:
            await nc.close()
        async with engine.begin() as conn:
            await conn.execute(
                insert(ConfigChange).values(
                    revision=revision,
                    changed_by=os.environ.get("USER", "operator"),
                    summary=summary,
                    config=json.loads(config_to_json(config)),
                )
            )
        return revision
    finally:
        await engine.dispose()
