"""Key names inside the shared KV buckets, so a writer and its readers agree on them."""

from __future__ import annotations

CONFIG_KEY = "trading"
"""The live trading config in the config bucket (the YAML shape as JSON, without credentials)."""
CONFIG_STATUS_KEY = "trading.status"
"""Why the router refused the latest config revision (empty once a valid one is applied)."""
EXPOSURE_KEY = "current"
"""The aggregator's latest ExposureSnapshot in the exposure bucket."""
