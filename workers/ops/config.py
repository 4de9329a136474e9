"""The live trading config: read it, change it. Every change is validated before it is written
(nothing is applied when a field is wrong, and the error names the field), written with
compare-and-set (two operators' changes both land), and recorded in ``config_changes`` with the
operator's name. `mbx config set` and the dashboard both change it through ``change_config``."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import Subjects
from workers.domain.config import ConfigError, MbxConfig, config_to_json, parse_config
from workers.domain.keys import CONFIG_KEY, CONFIG_STATUS_KEY
from workers.ops.errors import InvalidChange, OperatorError
from workers.platform.bus import JetStream
from workers.platform.db.models import ConfigChange
from workers.platform.live_config import change_live_config


@dataclass(frozen=True)
class LiveConfig:
    config: dict[str, Any] | None
    """As stored (None: the router never started, so nothing is live yet)."""
    revision: int
    refusal: str
    """The router's last refusal of a change, if any."""


async def read_live_config(js: Any, subjects: Subjects) -> LiveConfig:
    try:
        kv = await js.key_value(subjects.config_bucket)
    except BucketNotFoundError:
        return LiveConfig(None, 0, "")
    try:
        entry = await kv.get(CONFIG_KEY)
        live, revision = json.loads(entry.value or b"{}"), int(entry.revision or 0)
    except KeyNotFoundError:
        live, revision = None, 0
    try:
        refusal = (await kv.get(CONFIG_STATUS_KEY)).value or b""
    except KeyNotFoundError:
        refusal = b""
    return LiveConfig(live, revision, refusal.decode())


def parse_change(change: str) -> tuple[str, Any]:
    """``dotted.key=value`` (the value in YAML) as (key, value)."""
    key, sep, raw = change.partition("=")
    if not sep or not key:
        raise OperatorError(f"{change!r}: expected dotted.key=value (e.g. risk.kill_switches.all=true)")
    try:
        return key, yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as exc:
        raise OperatorError(f"{key}: the value is not valid YAML ({exc})") from None


def apply_change(base: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` (dotted) in ``base`` to ``value``, creating sections on the way."""
    node = base
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InvalidChange(f"{key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def changed(changes: dict[str, Any]) -> Callable[[dict[str, Any]], MbxConfig]:
    """The change of ``changes`` (dotted key: value) applied to whatever config is live, checked."""

    def change(live: dict[str, Any]) -> MbxConfig:
        for key, value in changes.items():
            apply_change(live, key, value)
        try:
            return parse_config(live, "the changed config")
        except ConfigError as exc:
            raise InvalidChange(str(exc)) from None

    return change


async def check_database(engine: AsyncEngine, what: str) -> None:
    """Nothing is changed that cannot be recorded: the audit database is checked first."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001  (any failure here means: do not go on)
        raise OperatorError(f"cannot record {what}: the database is not reachable ({type(exc).__name__})") from None


async def change_config(
    js: JetStream,
    engine: AsyncEngine,
    subjects: Subjects,
    change: Callable[[dict[str, Any]], MbxConfig],
    *,
    summary: str,
    operator: str,
) -> int:
    """Validate and write the change with compare-and-set, then record it in ``config_changes``;
    returns the new revision. ``InvalidChange`` (nothing written) names the bad field;
    ``ConfigError`` says there is no live config to change."""
    if not operator.strip():
        raise OperatorError("say who is making the change: the audit trail names every operator")
    await check_database(engine, "the change")
    revision, config = await change_live_config(js, subjects, change)
    async with engine.begin() as conn:
        await conn.execute(
            insert(ConfigChange).values(
                revision=revision,
                changed_by=operator.strip()[:100],
                summary=summary,
                config=json.loads(config_to_json(config)),
            )
        )
    return revision


__all__ = [
    "InvalidChange",
    "LiveConfig",
    "apply_change",
    "change_config",
    "changed",
    "check_database",
    "parse_change",
    "read_live_config",
]
