"""Tracing and metrics on the real stack (router, executors and aggregator in this process,
talking only through the real nats-server, so the trace context crosses NATS headers exactly
as between processes).

- One intent is one trace: the strategy's publish, the router's handling and decision, the
  executor's handling, rate wait and broker call, and the aggregator's write share its trace id,
  each span's parent being the span that published the message it handles.
- The metrics endpoint serves every series docs/operations.md documents, with values for what
  just happened (a routed and filled order, a dead letter), the NATS server's own figures
  included; `mbx status` names where to scrape.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from contracts import OrderIntent
from contracts.client import MbxClient
from tests.builders import intent_payload
from tests.conftest import eventually, fetch_all
from tests.servers import Servers
from workers.devstack.processes import free_port
from workers.platform import telemetry
from workers.platform.db.engine import make_engine
from workers.platform.logs import add_trace_ids
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    telemetry.add_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # later tests' spans are dropped


def trace_of(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context is not None and s.context.trace_id == trace_id]


async def test_one_intent_is_one_trace_from_the_strategy_through_router_executor_and_aggregator(
    start_pipeline: Any, isolated: Settings, spans: InMemorySpanExporter
) -> None:
    await start_pipeline(own_settings=isolated)
    intent = OrderIntent.model_validate(intent_payload())
    strategy = trace.get_tracer("a strategy")
    async with MbxClient.connect(isolated.nats_url or "", prefix=isolated.subject_prefix) as client:
        with strategy.start_as_current_span("rebalance") as root:
            tracker = await client.submit_and_wait(intent, timeout=30)
    assert tracker.terminal is not None and str(tracker.terminal.status) == "filled"
    trace_id = root.get_span_context().trace_id

    wanted = {"router orders", "decide", "executor routes", "rate-wait", "broker call", "persist"}

    def persisted_kinds() -> set[str]:
        return {
            str(s.attributes["subject"]).split(".")[1]
            for s in trace_of(spans, trace_id)
            if s.name == "persist" and s.attributes
        }

    async def all_there() -> bool:
        names = {s.name for s in trace_of(spans, trace_id)}
        return wanted <= names and {"routes", "exec"} <= persisted_kinds()

    await eventually(all_there, timeout=20)
    ours = trace_of(spans, trace_id)
    by_id = {s.context.span_id: s for s in ours if s.context is not None}
    # Every span but the strategy's root hangs off another span of this trace.
    orphans = [s.name for s in ours if s.name != "rebalance" and (s.parent is None or s.parent.span_id not in by_id)]
    assert orphans == []

    def ancestors(span: ReadableSpan) -> list[str]:
        chain = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            chain.append(span.name)
        return chain

    call = next(
        s for s in ours if s.name == "broker call" and s.attributes and s.attributes["call"] == "placing the order"
    )
    assert ancestors(call)[:2] == ["executor routes", "router orders"]  # the route was published in the router's span
    assert "submit" in ancestors(call)[-2] and ancestors(call)[-1] == "rebalance"
    router = next(s for s in ours if s.name == "router orders")
    assert router.kind is trace.SpanKind.CONSUMER and router.parent is not None and router.parent.is_remote
    assert router.attributes is not None and router.attributes["intent_id"] == intent.intent_id

    # Log lines written inside a span carry its ids.
    with strategy.start_as_current_span("logged") as logged:
        event = add_trace_ids(None, "info", {"event": "x"})
    assert event["trace_id"] == format(logged.get_span_context().trace_id, "032x")


def documented_series() -> set[str]:
    """The series names in docs/operations.md's metrics table."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(mbx_[a-z_]+)`", section, re.M))


def scrape(url: str) -> dict[str, list[Any]]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(families: dict[str, list[Any]], sample: str, **labels: str) -> float:
    family = sample.removesuffix("_total").removesuffix("_count")
    found = [s.value for s in families.get(family, []) if s.name == sample and labels.items() <= s.labels.items()]
    assert found, f"no sample {sample} {labels}; served: {sorted(families)}"
    return float(sum(found))


async def test_the_metrics_endpoint_serves_the_documented_series(
    start_pipeline: Any, isolated: Settings, servers: Servers, tmp_path: Path
) -> None:
    port = free_port()
    settings = isolated.model_copy(update={"metrics_port": port, "nats_monitor_url": servers.nats_monitor_url})
    await start_pipeline(own_settings=settings)
    url = f"http://127.0.0.1:{port}/metrics"
    async with MbxClient.connect(settings.nats_url or "", prefix=settings.subject_prefix) as client:
        tracker = await client.submit_and_wait(OrderIntent.model_validate(intent_payload()), timeout=30)
        assert tracker.terminal is not None
    nc = await nats.connect(settings.nats_url or "")
    try:
        await nc.jetstream().publish(
            settings.subjects.intent("strat1"), b"not json", headers={"Nats-Msg-Id": uuid.uuid4().hex}
        )
    finally:
        await nc.close()
    db = make_engine(settings.database_url or "", pool_size=1)
    try:
        await eventually(lambda: fetch_all(db, "SELECT 1 FROM orders WHERE status = 'filled'"), timeout=20)
    finally:
        await db.dispose()

    async def served() -> dict[str, list[Any]] | None:
        families = await asyncio.to_thread(scrape, url)
        return families if families.get("mbx_dead_letters") and families.get("mbx_aggregator_batch_size") else None

    families = await eventually(served, timeout=20)
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    documented = documented_series()
    assert len(documented) >= 20
    missing = [name for name in documented if f"# HELP {name} " not in text and f"# HELP {name}_total " not in text]
    assert missing == [], f"documented but not served: {missing}"
    undocumented = {
        m for m in re.findall(r"^# HELP (mbx_[a-z_]+) ", text, re.M) if m.removesuffix("_total") not in documented
    }
    assert undocumented == set(), f"served but not documented: {undocumented}"

    assert value(families, "mbx_intents_routed_total", broker="alpaca", rule="default:equity") >= 1
    assert value(families, "mbx_route_decision_seconds_count") >= 1
    assert value(families, "mbx_broker_call_seconds_count", broker="alpaca", call="placing the order") >= 1
    assert value(families, "mbx_rate_wait_seconds_count", broker="alpaca") >= 1
    assert 0 <= value(families, "mbx_rate_headroom_ratio", broker="alpaca") <= 1
    assert value(families, "mbx_queue_wait_seconds", broker="alpaca") >= 0
    assert value(families, "mbx_messages_handled_total", stage="router", outcome="routed") >= 1
    assert value(families, "mbx_dead_letters_total", stage="router") >= 1
    assert value(families, "mbx_aggregator_batch_size_count") >= 1
    assert value(families, "mbx_aggregator_commit_seconds_count") >= 1
    assert value(families, "mbx_nats_up") == 1
    orders = settings.subjects.stream_name("ORDERS")
    assert value(families, "mbx_nats_stream_messages", stream=orders) >= 2
    assert value(families, "mbx_nats_consumer_pending", stream=orders, consumer="router") >= 0

    # `mbx status` says where to scrape.
    env = {
        "MBX_NATS_URL": settings.nats_url or "",
        "MBX_SUBJECT_PREFIX": settings.subject_prefix,
        "MBX_DATA_DIR": str(tmp_path),
        "COLUMNS": "250",
        "PATH": "/usr/bin:/bin",
    }
    status = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "workers", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert f"router {url}" in status.stdout, status.stdout + status.stderr
    assert f"aggregator {url}" in status.stdout
