"""structlog set-up: console renderer on a terminal, JSON lines otherwise.

Never log secrets: messages carry none, settings keep keys as ``SecretStr``, and URLs are logged
through ``redact_url``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@]*):(?P<pw>[^@]*)@")


def redact_url(url: str | None) -> str:
    """``postgresql://u:secret@host/db`` -> ``postgresql://u:***@host/db``."""
    if not url:
        return ""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@" if m["pw"] else m[0], url)


def add_trace_ids(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the current trace and span ids on every line logged inside a span.
    OpenTelemetry is looked up, not imported: a process that made no span (an operator's
    command) never pays for loading it."""
    otel_trace = sys.modules.get("opentelemetry.trace")
    if otel_trace is None:
        return event
    context = otel_trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure structlog and the standard library once, for the whole process."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_trace_ids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(
        level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(name)s %(levelname)s %(message)s"
    )
    # FastStream logs every message at INFO; our handlers log one summary line instead.
    logging.getLogger("faststream").setLevel(logging.WARNING)
