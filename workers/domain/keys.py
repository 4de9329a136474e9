"""Key names inside the shared KV buckets, so a writer and its readers agree on them."""

from __future__ import annotations

import base64

CONFIG_KEY = "trading"
"""The live trading config in the config bucket (the YAML shape as JSON, without credentials)."""
CONFIG_STATUS_KEY = "trading.status"
"""Why the router refused the latest config revision (empty once a valid one is applied)."""
EXPOSURE_KEY = "current"
"""The aggregator's latest ExposureSnapshot in the exposure bucket."""


def key_token(value: str) -> str:
    """``value`` as one KV key token: an id may hold characters a NATS subject token may not
    (``.``, ``*``, ``>``, spaces), so keys carry it base64url-encoded, unpadded."""
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")
