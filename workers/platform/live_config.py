"""Writing the live trading config in KV (what `mbx config set` and the dashboard do)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from contracts import Subjects
from workers.domain.config import ConfigError, MbxConfig, config_to_json
from workers.domain.keys import CONFIG_KEY
from workers.platform.bus import JetStream, open_bucket

CONFIG_HISTORY = 20
"""Revisions the config bucket keeps (the router falls back to the newest valid one)."""


async def write_live_config(js: JetStream, subjects: Subjects, config: MbxConfig) -> int:
    """Replace the live routing config; returns the new revision."""
    kv = await open_bucket(js, subjects.config_bucket, history=CONFIG_HISTORY)
    return int(await kv.put(CONFIG_KEY, config_to_json(config)))


async def change_live_config(
    js: JetStream, subjects: Subjects, change: Callable[[dict[str, Any]], MbxConfig], attempts: int = 20
) -> tuple[int, MbxConfig]:
    """Apply ``change`` to the live config with compare-and-set: read it, change it (``change``
    validates and may raise ``ConfigError``), write it only if nobody wrote since, else read
    again. Two operators changing different keys at once both see their change applied.
    Returns the new revision and the config written."""
    kv = await open_bucket(js, subjects.config_bucket, history=CONFIG_HISTORY)
    for _ in range(attempts):
        try:
            entry = await kv.get(CONFIG_KEY)
        except KeyNotFoundError:
            raise ConfigError("no live config yet: start the router once (`make run`), or use --file") from None
        config = change(json.loads(entry.value or b"{}"))
        try:
            return int(await kv.update(CONFIG_KEY, config_to_json(config), last=entry.revision)), config
        except KeyWrongLastSequenceError:
            continue  # another change landed meanwhile: apply ours to it
    raise ConfigError(f"the live config kept changing; gave up after {attempts} attempts")
