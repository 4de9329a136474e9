"""The stack's health as the executors and workers report it: every broker's heartbeat, each
durable consumer's lag, and the aggregator's state."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from contracts import BrokerStatus, Subjects
from workers.platform.bus import read_bucket
from workers.platform.topology import Topology


@dataclass(frozen=True)
class ConsumerLag:
    stream: str
    consumer: str
    pending: int
    unacked: int
    redelivered: int


@dataclass(frozen=True)
class StackStatus:
    brokers: list[BrokerStatus]
    consumers: list[ConsumerLag]
    never_started: list[str] = field(default_factory=list)
    """Durable consumers not created yet: their worker never ran."""
    aggregator: dict[str, Any] | None = None
    """The aggregator's last word: ``state`` (ok or failing), ``since`` and ``error``."""
    scrape: list[tuple[str, str]] = field(default_factory=list)
    """Where to scrape Prometheus metrics: (worker, URL), as each serving worker announced."""


def broker_state(status: BrokerStatus, heartbeat_timeout_s: float, now: datetime | None = None) -> str:
    """up, down, or stale (no heartbeat within the timeout: the router treats it as down)."""
    if ((now or datetime.now(UTC)) - status.last_seen).total_seconds() > heartbeat_timeout_s:
        return "stale"
    return "up" if status.connected else "down"


async def broker_statuses(js: Any, subjects: Subjects) -> list[BrokerStatus]:
    try:
        entries = await read_bucket(js, subjects.status_bucket)
    except Exception:  # noqa: BLE001  (no bucket yet: no executor ever ran)
        return []
    return sorted((BrokerStatus.model_validate_json(v) for _, v in entries), key=lambda s: str(s.broker))


async def stack_status(js: Any, subjects: Subjects) -> StackStatus:
    statuses = await broker_statuses(js, subjects)
    topology = Topology(subjects)
    specs = [
        topology.router_consumer(),
        topology.router_failover_consumer(),
        topology.router_cancel_consumer(),
        *(topology.executor_consumer(s.broker) for s in statuses),
        *topology.aggregator_consumers(),
    ]
    lags, missing = [], []
    for spec in specs:
        try:
            info = await js.consumer_info(spec.stream, spec.durable)
        except Exception:  # noqa: BLE001  (never started)
            missing.append(spec.durable)
            continue
        lags.append(
            ConsumerLag(spec.stream, spec.durable, info.num_pending, info.num_ack_pending, info.num_redelivered)
        )
    try:
        workers = dict(await read_bucket(js, subjects.worker_status_bucket))
    except Exception:  # noqa: BLE001  (no worker has reported yet)
        workers = {}
    aggregator = json.loads(workers["aggregator"]) if "aggregator" in workers else None
    try:
        announced = [json.loads(v) for _, v in await read_bucket(js, topology.scrape_bucket)]
    except Exception:  # noqa: BLE001  (no worker serves metrics)
        announced = []
    scrape = sorted({(a["worker"], a["url"]) for a in announced})
    return StackStatus(statuses, lags, missing, aggregator, scrape)
