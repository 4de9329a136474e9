"""The router's live inputs and how they change. No I/O: the router worker feeds it.

- Config: the trading config (brokers, risk, routing) from the config KV bucket; a change that
  fails validation is refused with its reason and the previous config stays in force. The KV
  revision is the ``config_version`` every decision carries.
- Exposure: the aggregator's latest snapshot, plus what this router routed since (dropped once
  a newer snapshot includes it).
- Backlog: the orders queued at each broker's executors (``backlog.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from pydantic import ValidationError

from contracts import BrokerName, ExposureSnapshot, FillQuality, RouteDecision, Side
from workers.domain.config import ConfigError, MbxConfig, parse_config
from workers.domain.fees import order_size
from workers.domain.quotes import PriceCheck
from workers.router.accounts import cash_needed
from workers.router.backlog import Backlog
from workers.router.registry import BrokerRegistry
from workers.router.risk import RiskView, signed
from workers.router.rules import MarketView

IN_FLIGHT_HORIZON = timedelta(minutes=10)
"""How long a routed order counts toward exposure when no exposure snapshot includes it."""


@dataclass
class _InFlight:
    at: datetime
    broker: BrokerName
    symbol: str
    gross: Decimal
    """What the order adds to the broker's gross exposure (negative for one that closes a position)."""
    net: Decimal
    spend: Decimal = Decimal(0)
    """Cash the order spends at the broker (0 for one that closes a position)."""
    side: Side = Side.BUY
    quantity: Decimal = Decimal(0)


class RouterState:
    def __init__(self, config: MbxConfig, version: int = 0, registry: BrokerRegistry | None = None) -> None:
        self.config = config
        self.version = version
        self.registry = registry or BrokerRegistry(
            config.routing.heartbeat_timeout_s, hold_when_unsure=config.routing.hold_when_unsure_s
        )
        self.backlog = Backlog()
        self._fill_quality: dict[BrokerName, FillQuality] = {}
        self.last_error: str = ""
        self.snapshot: ExposureSnapshot | None = None
        self._in_flight: list[_InFlight] = []
        self._flight_by_broker: dict[BrokerName, Decimal] = {}
        self._flight_by_symbol: dict[str, Decimal] = {}
        self._flight_spend: dict[BrokerName, Decimal] = {}
        self._flight_quantity: dict[tuple[BrokerName, str, Side], Decimal] = {}

    def apply_config(self, raw: bytes, revision: int) -> str | None:
        """Switch to a new config; returns the reason when it is refused."""
        try:
            config = parse_config(json.loads(raw), f"config revision {revision}")
        except (ConfigError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            self.last_error = str(exc)
            return self.last_error
        self.config, self.version, self.last_error = config, revision, ""
        self.registry.heartbeat_timeout = config.routing.heartbeat_timeout_s
        self.registry.hold_when_unsure = config.routing.hold_when_unsure_s
        return None

    def apply_fill_quality(self, quality: FillQuality) -> None:
        self._fill_quality[quality.broker] = quality

    def market(self, reference_price: Decimal | None, price_check: PriceCheck | None = None) -> MarketView:
        """Live broker health, the brokers' queues and the fill scores measured over enough
        orders, at the quote ``price_check`` judged (None: no quote source was asked)."""
        minimum = self.config.routing.min_fill_samples
        scores = {b: q.fill_score for b, q in self._fill_quality.items() if q.samples >= minimum}
        return MarketView(
            reference_price=reference_price,
            health=self.registry.health_map(),
            fill_scores=scores,
            price_check=price_check,
            queued=self.backlog.snapshot(),
            drain=self.backlog.drain_snapshot(),
        )

    def apply_exposure(self, raw: bytes) -> str | None:
        try:
            snapshot = ExposureSnapshot.model_validate_json(raw)
        except ValidationError as exc:
            return f"invalid exposure snapshot: {exc.error_count()} errors"
        self.snapshot = snapshot
        self._forget(lambda f: f.at <= snapshot.created_at)
        return None

    def clear_exposure(self) -> None:
        """No snapshot any more (the key was purged): allocation limits are off until the next."""
        self.snapshot = None

    def risk_view(self) -> RiskView:
        """Exposure as the last snapshot saw it plus what was routed since: running totals, so a
        decision costs the same however many orders are in flight."""
        return RiskView(
            self.snapshot,
            dict(self._flight_by_broker),
            dict(self._flight_by_symbol),
            dict(self._flight_spend),
            dict(self._flight_quantity),
        )

    def _forget(self, covered: Callable[[_InFlight], bool]) -> None:
        """Drop in-flight records a snapshot covers, or that are older than ``IN_FLIGHT_HORIZON``
        (an aggregator that has published nothing for that long no longer bounds memory)."""
        horizon = datetime.now(UTC) - IN_FLIGHT_HORIZON
        kept = [f for f in self._in_flight if not covered(f) and f.at > horizon]
        if len(kept) == len(self._in_flight):
            return
        self._in_flight = kept
        self._flight_by_broker.clear()
        self._flight_by_symbol.clear()
        self._flight_spend.clear()
        self._flight_quantity.clear()
        for f in kept:
            self._add(f)

    def _add(self, f: _InFlight) -> None:
        self._flight_by_broker[f.broker] = self._flight_by_broker.get(f.broker, Decimal(0)) + f.gross
        self._flight_by_symbol[f.symbol] = self._flight_by_symbol.get(f.symbol, Decimal(0)) + f.net
        if f.spend:
            self._flight_spend[f.broker] = self._flight_spend.get(f.broker, Decimal(0)) + f.spend
        if f.quantity:
            key = (f.broker, f.symbol, f.side)
            self._flight_quantity[key] = self._flight_quantity.get(key, Decimal(0)) + f.quantity

    def record(self, decision: RouteDecision, price: Decimal | None) -> _InFlight | None:
        """Count a routed order toward exposure, the broker's cash and its positions until a
        snapshot includes it (what is counted, or None). One that closes a position shrinks the
        exposure and spends nothing."""
        intent = decision.intent
        quantity, notional = order_size(intent, price)
        if notional is None and quantity is None:
            return None
        closes = decision.closes_position is not None
        value = notional or Decimal(0)
        fresh = decision.quote if decision.reference_price is not None else None
        spend = None if closes else cash_needed(intent, price, fresh.ask if fresh is not None else None)
        flight = _InFlight(
            decision.created_at,
            decision.broker,
            intent.symbol,
            -value if closes else value,
            signed(intent, value),
            spend or Decimal(0),
            intent.side,
            quantity or Decimal(0),
        )
        self._in_flight.append(flight)
        self._add(flight)
        if len(self._in_flight) % 1000 == 0:
            self._forget(lambda _: False)  # age out what no snapshot ever covered
        return flight

    def withdraw(self, flight: _InFlight | None) -> None:
        """Stop counting an order ``record`` counted (its route was never published)."""
        if flight is not None and flight in self._in_flight:
            self._forget(lambda f: f is flight)
