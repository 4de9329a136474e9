"""Prometheus metrics: each worker process serves ``/metrics`` on ``MBX_METRICS_PORT``.

The series are documented in docs/operations.md (a test checks both agree). A worker whose
port cannot be opened logs it and trades on: metrics never stop an order. Each serving worker
announces its address in a short-lived KV entry, so ``mbx status`` can say where to scrape.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import structlog
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = structlog.get_logger("mbx.metrics")

disable_created_metrics()  # type: ignore[no-untyped-call]  # a `_created` series per counter and histogram doubles the scrape for nothing

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

INTENTS_ROUTED = Counter("mbx_intents_routed", "Route decisions published, by broker and rule.", ["broker", "rule"])
INTENTS_REJECTED = Counter("mbx_intents_rejected", "Intents the router rejected, by reason.", ["reason"])
DECISION_SECONDS = Histogram(
    "mbx_route_decision_seconds",
    "Time to decide one route (its count's rate: decisions per second).",
    buckets=LATENCY_BUCKETS,
)
QUEUE_WAIT = Gauge(
    "mbx_queue_wait_seconds", "Expected wait of a new order at each broker, as the router sees it.", ["broker"]
)
FAILOVERS = Counter("mbx_failovers", "Orders that failed at a broker and were sent to the router again.", ["broker"])
BROKER_CALL_SECONDS = Histogram(
    "mbx_broker_call_seconds", "Broker API calls, by broker and call.", ["broker", "call"], buckets=LATENCY_BUCKETS
)
RATE_WAIT_SECONDS = Histogram(
    "mbx_rate_wait_seconds", "Time an order waited for its broker's rate budget.", ["broker"], buckets=LATENCY_BUCKETS
)
RATE_HEADROOM = Gauge("mbx_rate_headroom_ratio", "Share of the broker's rate budget left (0-1).", ["broker"])
MESSAGES_HANDLED = Counter("mbx_messages_handled", "Messages handled, by stage and outcome.", ["stage", "outcome"])
HANDLE_SECONDS = Histogram(
    "mbx_handle_seconds", "Time to handle one message, by stage.", ["stage"], buckets=LATENCY_BUCKETS
)
DEAD_LETTERS = Counter("mbx_dead_letters", "Messages dead-lettered, by stage.", ["stage"])
CONSUMER_PENDING = Gauge(
    "mbx_consumer_pending", "Messages waiting for this durable consumer, as of its last fetch.", ["consumer"]
)
BATCH_SIZE = Histogram(
    "mbx_aggregator_batch_size", "Messages per aggregator batch.", buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
)
COMMIT_SECONDS = Histogram(
    "mbx_aggregator_commit_seconds", "Time to write and commit one aggregator batch.", buckets=LATENCY_BUCKETS
)

ANNOUNCE_TTL_S = 60.0
"""A scrape address not announced again within this is gone (its worker stopped)."""


def serve(port: int, host: str) -> str | None:
    """Serve ``/metrics``; the scrape URL, or None (logged) when the port cannot be opened."""
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("metrics not served: the port cannot be opened", port=port, error=str(exc))
        return None
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104  (a listen-all address, not a bind)
    return f"http://{shown}:{port}/metrics"


class NatsServerCollector(Collector):
    """nats-server's own figures, read from its monitoring endpoint (``/varz``, ``/jsz``) at each
    scrape: nats-server has no ``/metrics`` of its own."""

    def __init__(self, monitor_url: str) -> None:
        self.monitor_url = monitor_url.rstrip("/")

    def _read(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.monitor_url}{path}", timeout=2) as reply:  # noqa: S310  (operator's URL)
            return dict(json.loads(reply.read()))

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("mbx_nats_up", "1 when the NATS monitoring endpoint answered this scrape.")
        try:
            varz = self._read("/varz")
            jsz = self._read("/jsz?streams=true&consumers=true")
        except (urllib.error.URLError, OSError, ValueError):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("mbx_nats_connections", "Client connections to this server.", value=varz["connections"])
        yield GaugeMetricFamily("mbx_nats_mem_bytes", "Resident memory of this server.", value=varz["mem"])
        yield CounterMetricFamily("mbx_nats_in_msgs", "Messages received by this server.", value=varz["in_msgs"])
        yield CounterMetricFamily("mbx_nats_out_msgs", "Messages sent by this server.", value=varz["out_msgs"])
        yield CounterMetricFamily(
            "mbx_nats_slow_consumers", "Clients this server cut off as too slow.", value=varz["slow_consumers"]
        )
        messages = GaugeMetricFamily("mbx_nats_stream_messages", "Messages kept in each stream.", labels=["stream"])
        size = GaugeMetricFamily("mbx_nats_stream_bytes", "Bytes kept in each stream.", labels=["stream"])
        pending = GaugeMetricFamily(
            "mbx_nats_consumer_pending", "Messages not yet delivered to each consumer.", labels=["stream", "consumer"]
        )
        unacked = GaugeMetricFamily(
            "mbx_nats_consumer_ack_pending", "Messages delivered and not yet acked.", labels=["stream", "consumer"]
        )
        for account in jsz.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                name, state = stream["name"], stream.get("state") or {}
                messages.add_metric([name], state.get("messages", 0))
                size.add_metric([name], state.get("bytes", 0))
                for consumer in stream.get("consumer_detail") or []:
                    pending.add_metric([name, consumer["name"]], consumer.get("num_pending", 0))
                    unacked.add_metric([name, consumer["name"]], consumer.get("num_ack_pending", 0))
        yield from (messages, size, pending, unacked)


_watched: set[str] = set()


def watch_nats_server(monitor_url: str) -> None:
    """Add the NATS server's figures to this process's ``/metrics`` (once per address)."""
    if monitor_url not in _watched:
        REGISTRY.register(NatsServerCollector(monitor_url))
        _watched.add(monitor_url)
