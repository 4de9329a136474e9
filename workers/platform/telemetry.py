"""Tracing: one OpenTelemetry trace per intent, carried between processes in NATS headers.

Every publish carries the W3C ``traceparent`` of the span it is made in; every handled message
opens a CONSUMER span whose parent is that context, so a strategy's publish, the router's
decision, the executor's broker call and the aggregator's write are one trace. Spans are
exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is
set; otherwise they are made and dropped, and their ids still appear in every log line.
There is no official OpenTelemetry instrumentation for nats-py, so this is done by hand.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

tracer = trace.get_tracer("mbx")

OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def configure_tracing(service: str) -> TracerProvider:
    """The process's tracer provider, made once (the first worker of a process names it); an
    OTLP exporter when an endpoint is configured."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": f"mbx-{service}"}))
    if any(os.environ.get(name) for name in OTLP_ENDPOINT_VARIABLES):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def add_processor(processor: SpanProcessor, service: str = "mbx") -> None:
    """Send this process's spans to ``processor`` too (tests: an in-memory exporter)."""
    configure_tracing(service).add_span_processor(processor)


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
    context = propagate.extract(dict(headers or {}))
    return tracer.start_span(name, context=context, kind=SpanKind.CONSUMER, attributes=attributes)


def failed(span_: Span, error: BaseException) -> None:
    span_.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
