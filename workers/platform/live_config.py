"""Writing the live trading config in KV (what `mbx config set` and the dashboard do)."""

from __future__ import annotations

from nats.js import JetStreamContext

from contracts import Subjects
from workers.domain.config import MbxConfig, config_to_json
from workers.domain.keys import CONFIG_KEY
from workers.platform.bus import open_bucket

CONFIG_HISTORY = 20
"""Revisions the config bucket keeps (the router falls back to the newest valid one)."""


async def write_live_config(js: JetStreamContext, subjects: Subjects, config: MbxConfig) -> int:
    """Replace the live routing config; returns the new revision."""
    kv = await open_bucket(js, subjects.config_bucket, history=CONFIG_HISTORY)
    return int(await kv.put(CONFIG_KEY, config_to_json(config)))
