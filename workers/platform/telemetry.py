"""Tracing: one OpenTelemetry trace per intent, carried between processes in NATS headers.

Every publish carries the W3C ``traceparent`` of the span it is made in; every handled message
opens a CONSUMER span whose parent is that context, so a strategy's publish, the router's
decision, the executor's broker call and the aggregator's write are one trace. Spans are
exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is
set; otherwise nothing would receive them, so they are not recorded (``Recording``): each still
gets its ids, which every log line and every published message carry, and only the span object
is not made (on this machine the router spent about a tenth of its CPU making spans it dropped).
There is no official OpenTelemetry instrumentation for nats-py, so this is done by hand.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler, SamplingResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.context import Context
    from opentelemetry.trace import Link
    from opentelemetry.trace.span import TraceState
    from opentelemetry.util.types import Attributes

tracer = trace.get_tracer("mbx")

OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class Recording(Sampler):
    """Records every span once something receives them (an exporter, a test's processor), and
    none before: an unrecorded span keeps its trace and span ids (log lines and the
    ``traceparent`` of every publish carry them) but costs no span object, attributes or
    processor calls."""

    def __init__(self) -> None:
        self.on = False

    def should_sample(  # noqa: PLR0917  (OpenTelemetry's Sampler signature)
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        chosen = ALWAYS_ON if self.on else ALWAYS_OFF
        return chosen.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"Recording(on={self.on})"


recording = Recording()


def configure_tracing(service: str) -> TracerProvider:
    """The process's tracer provider, made once (the first worker of a process names it); an
    OTLP exporter when an endpoint is configured, and spans recorded only then."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": f"mbx-{service}"}), sampler=recording)
    if any(os.environ.get(name) for name in OTLP_ENDPOINT_VARIABLES):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        recording.on = True
    trace.set_tracer_provider(provider)
    return provider


def add_processor(processor: SpanProcessor, service: str = "mbx") -> None:
    """Send this process's spans to ``processor`` too (tests: an in-memory exporter), recording
    every span from now on."""
    configure_tracing(service).add_span_processor(processor)
    recording.on = True


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add the current span's ``traceparent`` (nothing outside a span) to ``headers``."""
    propagate.inject(headers)
    return headers


@contextmanager
def consuming(name: str, headers: Mapping[str, str] | None, **attributes: Any) -> Iterator[Span]:
    """A CONSUMER span for one handled message, child of the context its publisher sent."""
    context = propagate.extract(dict(headers or {}))
    with tracer.start_as_current_span(name, context=context, kind=SpanKind.CONSUMER, attributes=attributes) as span:
        yield span


def span(name: str, **attributes: Any) -> Any:
    """A span inside the current one (decide, rate-wait, broker call, persist)."""
    return tracer.start_as_current_span(name, attributes=attributes)


def start_child(name: str, headers: Mapping[str, str] | None, **attributes: Any) -> Span:
    """A span of the message's trace, not made current: the aggregator writes many intents' rows
    in one transaction and ends each intent's span when it commits."""
    if not recording.on:
        # Never current, so no log line or publish reads its ids: unrecorded, it would be nothing.
        return trace.INVALID_SPAN
    context = propagate.extract(dict(headers or {}))
    return tracer.start_span(name, context=context, kind=SpanKind.CONSUMER, attributes=attributes)


def failed(span_: Span, error: BaseException) -> None:
    span_.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
