"""The broker registry: which brokers exist, what they support, and whether they are up.

In the running system it is fed by the executors' ``BrokerStatus`` heartbeats (kept in the
broker-status KV bucket). A broker is up when its latest heartbeat says connected and is younger
than ``heartbeat_timeout``; a broker never heard from is down. A stale heartbeat is not always the
broker's fault: when the bus may be why (``judge``), the broker is *unsure* rather than down.
Pure apart from the clock, which tests inject.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from contracts import AssetClass, BrokerName, BrokerStatus
from workers.domain.capabilities import CAPABILITIES, VenueCapabilities

BROKERS: tuple[BrokerName, ...] = tuple(BrokerName)
"""Every broker, in the order ties are broken and decisions list them."""
HEARTBEAT_SLACK_S = 0.5
"""A heartbeat this much older than the start of a grace period still counts as recent."""
HEALTH_REUSE_S = 0.1
"""Seconds a health map is reused: heartbeats come every second and a broker goes stale after
several, so a tenth of a second changes no decision."""


@dataclass(frozen=True, slots=True)
class BrokerHealth:
    """What routing needs to know about one broker right now."""

    up: bool
    reason: str
    latency_ms: float | None = None
    rate_limit_headroom: float = 1.0
    error_rate: float = 0.0
    unsure: bool = False
    """Neither up nor known to be down: its heartbeat is stale, but the bus may be why. Intents
    that could go to it are held (``routing.hold_when_unsure_s``) rather than routed without it."""


def judge(
    statuses: Mapping[BrokerName, BrokerStatus | None],
    now: float,
    heartbeat_timeout: float,
    hold_when_unsure: float,
    bus_trouble_at: float | None = None,
) -> dict[BrokerName, BrokerHealth]:
    """Every broker's health at ``now`` (epoch seconds) from its latest heartbeat.

    - No heartbeat: down. A fresh one: up, or down when the executor says its broker is down.
    - A stale heartbeat whose last word was "down": down (the executor said so).
    - A stale heartbeat whose last word was "up" is the broker's trouble only while the bus is
      healthy. It is *unsure* when the bus may be why: the router's own bus operations failed
      since that heartbeat (``bus_trouble_at``, and no longer ago than ``heartbeat_timeout``:
      the time executors get to speak once the bus is back), or another broker's heartbeat went
      stale with it (within ``heartbeat_timeout`` of each other). Unsure lasts until the silence
      is ``heartbeat_timeout + hold_when_unsure`` old; from then on the broker is down.
    """
    stale: dict[BrokerName, float] = {}  # silent brokers whose last word was "up": when they went quiet
    for name, status in statuses.items():
        if status is not None and status.connected:
            seen = status.last_seen.timestamp()
            if heartbeat_timeout < now - seen < heartbeat_timeout + hold_when_unsure:
                stale[name] = seen
    if bus_trouble_at is not None and now - bus_trouble_at > heartbeat_timeout:
        bus_trouble_at = None  # long enough ago for every executor to have spoken since
    health: dict[BrokerName, BrokerHealth] = {}
    for name in BROKERS:
        status = statuses.get(name)
        if status is None:
            health[name] = BrokerHealth(False, f"no heartbeat from {name}'s executor")
            continue
        age = now - status.last_seen.timestamp()
        doubt = _doubt(name, stale, heartbeat_timeout, bus_trouble_at)
        if doubt:
            left = heartbeat_timeout + hold_when_unsure - age
            reason = f"{name}'s last heartbeat is {age:.0f}s old and {doubt}: unsure for up to {left:.0f}s more"
            health[name] = BrokerHealth(False, reason, status.latency_ms, unsure=True)
        elif age > heartbeat_timeout:
            health[name] = BrokerHealth(False, f"{name}'s last heartbeat is {age:.0f}s old", status.latency_ms)
        elif not status.connected:
            why = f"{name} is down: {status.reason}" if status.reason else f"{name} is disconnected"
            health[name] = BrokerHealth(False, why, status.latency_ms)
        else:
            health[name] = BrokerHealth(True, "", status.latency_ms, status.rate_limit_headroom, status.error_rate)
    return health


def _doubt(
    name: BrokerName, stale: Mapping[BrokerName, float], heartbeat_timeout: float, bus_trouble_at: float | None
) -> str:
    """Why ``name``'s silence may be the bus's fault rather than its broker's ("" when it is not)."""
    seen = stale.get(name)
    if seen is None:
        return ""
    if bus_trouble_at is not None and bus_trouble_at >= seen - HEARTBEAT_SLACK_S:
        return "the router's own bus operations failed since"
    with_it = sorted(b for b, t in stale.items() if b != name and abs(t - seen) <= heartbeat_timeout)
    return f"{', '.join(with_it)} went silent with it" if with_it else ""


@dataclass
class BrokerInfo:
    name: BrokerName
    capabilities: VenueCapabilities
    adapter: Any = None
    overrides: dict[str, Any] = field(default_factory=dict)
    status: BrokerStatus | None = None


class BrokerRegistry:
    def __init__(
        self, heartbeat_timeout: float = 5.0, clock: Callable[[], float] = time.time, hold_when_unsure: float = 30.0
    ) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.hold_when_unsure = hold_when_unsure
        self._clock = clock
        self._brokers: dict[BrokerName, BrokerInfo] = {}
        self._health: tuple[float, tuple[float, float], Mapping[BrokerName, BrokerHealth]] | None = None
        self._bus_trouble_at: float | None = None
        self._grace_from = 0.0
        self._grace_until = 0.0
        self._awaited: frozenset[BrokerName] = frozenset()

    def begin_grace(self, seconds: float, brokers: Iterable[BrokerName]) -> None:
        """From now, for up to ``seconds``, a broker of ``brokers`` with no heartbeat since now is
        *starting*, not down: the router just started, or NATS came back after an outage and
        every heartbeat looks old only because the server was away."""
        self._grace_from = self._clock()
        self._grace_until = self._grace_from + seconds
        self._awaited = frozenset(brokers)
        self._health = None

    def bus_trouble(self) -> None:
        """The router's own bus operations are failing or electing now: a heartbeat gone stale
        since may be the bus's fault, not its broker's (``judge``)."""
        self._bus_trouble_at = self._clock()
        self._health = None

    def starting(self) -> frozenset[BrokerName]:
        """The brokers still awaited within the grace period (empty once each has spoken, or
        the period is over)."""
        if not self._awaited:
            return frozenset()
        if self._clock() >= self._grace_until:
            self._awaited = frozenset()
            return self._awaited
        # A heartbeat from just before the grace began counts: the executor is beating.
        since = self._grace_from - HEARTBEAT_SLACK_S
        self._awaited = frozenset(b for b in self._awaited if not self._heard_since(b, since))
        return self._awaited

    def _heard_since(self, name: BrokerName, since: float) -> bool:
        info = self._brokers.get(name)
        return info is not None and info.status is not None and info.status.last_seen.timestamp() >= since

    def register(self, name: BrokerName, adapter: Any = None, **overrides: Any) -> BrokerInfo:
        """Add a broker (or replace its adapter and overrides, keeping its last status)."""
        previous = self._brokers.get(name)
        info = BrokerInfo(name, CAPABILITIES[name], adapter, dict(overrides), previous.status if previous else None)
        self._brokers[name] = info
        self._health = None
        return info

    def unregister(self, name: BrokerName) -> None:
        self._brokers.pop(name, None)
        self._health = None

    def update(self, status: BrokerStatus) -> None:
        """Record a heartbeat; an unregistered broker is registered on its first heartbeat."""
        info = self._brokers.get(status.broker) or self.register(status.broker)
        if info.status is None or status.last_seen >= info.status.last_seen:
            info.status = status
            self._health = None

    def health(self, name: BrokerName) -> BrokerHealth:
        return self.health_map()[name]

    def unsure(self) -> frozenset[BrokerName]:
        """The brokers neither up nor known to be down right now."""
        return frozenset(name for name, health in self.health_map().items() if health.unsure)

    def awaited(self) -> frozenset[BrokerName]:
        """The brokers an intent that could go to them waits for: starting or unsure."""
        return self.starting() | self.unsure()

    def health_map(self) -> Mapping[BrokerName, BrokerHealth]:
        """Every broker's health; the same map is reused for ``HEALTH_REUSE_S`` until a
        heartbeat or a registration changes it (the router asks once per decision)."""
        now = self._clock()
        cached = self._health
        bounds = (self.heartbeat_timeout, self.hold_when_unsure)
        if cached is not None and 0 <= now - cached[0] < HEALTH_REUSE_S and cached[1] == bounds:
            return cached[2]
        statuses = {name: info.status for name, info in self._brokers.items()}
        health = judge(statuses, now, *bounds, self._bus_trouble_at)
        self._health = (now, bounds, health)
        return health

    def get_connected(self) -> list[BrokerName]:
        return [name for name in self._brokers if self.health(name).up]

    def get_by_asset(self, asset_type: AssetClass) -> list[BrokerName]:
        return [name for name in self.get_connected() if CAPABILITIES[name].support_for(asset_type) is not None]

    def get_best_for(
        self, asset_type: AssetClass, criteria: Literal["latency", "error_rate", "headroom"] = "latency"
    ) -> BrokerName | None:
        """The connected broker that trades ``asset_type`` and is best by one health criterion."""
        candidates = [(name, self.health(name)) for name in self.get_by_asset(asset_type)]
        if not candidates:
            return None
        keys: dict[str, Callable[[tuple[BrokerName, BrokerHealth]], float]] = {
            "latency": lambda c: c[1].latency_ms if c[1].latency_ms is not None else float("inf"),
            "error_rate": lambda c: c[1].error_rate,
            "headroom": lambda c: -c[1].rate_limit_headroom,
        }
        return min(candidates, key=keys[criteria])[0]

    def status_summary(self) -> dict[str, dict[str, Any]]:
        summary = {}
        for name, info in self._brokers.items():
            health = self.health(name)
            summary[str(name)] = {
                "up": health.up,
                "reason": health.reason,
                "latency_ms": health.latency_ms,
                "rate_limit_headroom": health.rate_limit_headroom,
                "error_rate": health.error_rate,
                "unsure": health.unsure,
                "last_seen": info.status.last_seen.isoformat() if info.status else None,
                "assets": sorted(str(a) for a in info.capabilities.assets),
            }
        return summary
