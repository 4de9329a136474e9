"""The router's live inputs and how they change. No I/O: the router worker feeds it.

- Config: the trading config (brokers, risk, routing) from the config KV bucket; a change that
  fails validation is refused with its reason and the previous config stays in force. The KV
  revision is the ``config_version`` every decision carries.
- Exposure: the aggregator's latest snapshot, plus what this router routed since (dropped once
  a newer snapshot includes it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from contracts import BrokerName, ExposureSnapshot, FillQuality, RouteDecision
from workers.router.registry import BrokerRegistry
from workers.router.risk import RiskView, signed
from workers.router.rules import MarketView, order_size
from workers.settings import ConfigError, MbxConfig, parse_config

CONFIG_KEY = "trading"
EXPOSURE_KEY = "current"


def config_to_json(config: MbxConfig) -> bytes:
    """The live config as stored in KV: everything but credentials and the database URL."""
    data: dict[str, Any] = config.model_dump(
        mode="json", exclude={"database": True, "brokers": {"__all__": {"credentials"}}}
    )
    return json.dumps(data, sort_keys=True).encode()


@dataclass
class _InFlight:
    at: datetime
    broker: BrokerName
    symbol: str
    gross: Decimal
    net: Decimal


class RouterState:
    def __init__(self, config: MbxConfig, version: int = 0, registry: BrokerRegistry | None = None) -> None:
        self.config = config
        self.version = version
        self.registry = registry or BrokerRegistry(config.routing.heartbeat_timeout_s)
        self._fill_quality: dict[BrokerName, FillQuality] = {}
        self.last_error: str = ""
        self.snapshot: ExposureSnapshot | None = None
        self._in_flight: list[_InFlight] = []

    def apply_config(self, raw: bytes, revision: int) -> str | None:
        """Switch to a new config; returns the reason when it is refused."""
        try:
            config = parse_config(json.loads(raw), f"config revision {revision}")
        except (ConfigError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            self.last_error = str(exc)
            return self.last_error
        self.config, self.version, self.last_error = config, revision, ""
        self.registry.heartbeat_timeout = config.routing.heartbeat_timeout_s
        return None

    def apply_fill_quality(self, quality: FillQuality) -> None:
        self._fill_quality[quality.broker] = quality

    def market(self, reference_price: Decimal | None) -> MarketView:
        """Live broker health and the fill scores measured over enough orders."""
        minimum = self.config.routing.min_fill_samples
        scores = {b: q.fill_score for b, q in self._fill_quality.items() if q.samples >= minimum}
        return MarketView(reference_price=reference_price, health=self.registry.health_map(), fill_scores=scores)

    def apply_exposure(self, raw: bytes) -> str | None:
        try:
            snapshot = ExposureSnapshot.model_validate_json(raw)
        except ValidationError as exc:
            return f"invalid exposure snapshot: {exc.error_count()} errors"
        self.snapshot = snapshot
        self._in_flight = [f for f in self._in_flight if f.at > snapshot.created_at]
        return None

    def clear_exposure(self) -> None:
        """No snapshot any more (the key was purged): allocation limits are off until the next."""
        self.snapshot = None

    def risk_view(self) -> RiskView:
        by_broker: dict[BrokerName, Decimal] = {}
        by_symbol: dict[str, Decimal] = {}
        for f in self._in_flight:
            by_broker[f.broker] = by_broker.get(f.broker, Decimal(0)) + f.gross
            by_symbol[f.symbol] = by_symbol.get(f.symbol, Decimal(0)) + f.net
        return RiskView(self.snapshot, by_broker, by_symbol)

    def record(self, decision: RouteDecision, price: Decimal | None) -> None:
        """Count a routed order toward exposure until a snapshot includes it."""
        _, notional = order_size(decision.intent, price)
        if notional is None:
            return
        self._in_flight.append(
            _InFlight(
                decision.created_at,
                decision.broker,
                decision.intent.symbol,
                notional,
                signed(decision.intent, notional),
            )
        )
