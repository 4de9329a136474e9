"""What every HTTP broker adapter shares: one pooled ``httpx.AsyncClient`` with explicit
timeouts, and the translation of transport failures and HTTP answers into the venue errors.

The rule that keeps orders single: a request that provably never reached the broker (connection
refused, DNS failure, a 429, an auth refusal) is ``VenueUnavailable`` and safe to send again; a
request that may have reached it (a timeout or a reset after sending, a 5xx answer to a POST)
is ``VenueAmbiguous``: the order is looked up, never sent blindly again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from workers.domain.venue import VenueAmbiguous, VenueAuthFailed, VenueRateLimited, VenueUnavailable

_FRACTION = re.compile(r"(\.\d{6})\d+")

DEFAULT_RETRY_AFTER_S = 1.0
"""How long to wait after a 429 that names no reset time."""


def make_client(
    base_url: str,
    timeout_s: float,
    *,
    headers: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """A pooled keep-alive client (HTTP/1.1) whose connect, read, write and pool waits are each
    bounded; ``transport`` replaces the network (the tests' fake brokers)."""
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=10, keepalive_expiry=30.0)
    return httpx.AsyncClient(
        base_url=base_url, timeout=timeout, limits=limits, headers=dict(headers or {}), transport=transport
    )


IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
"""Methods whose repetition has the effect of one request (RFC 9110, 9.2.2)."""


async def send(
    client: httpx.AsyncClient,
    broker: str,
    method: str,
    path: str,
    *,
    sign: Callable[[httpx.Request], None] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request and return the broker's answer, raising the venue error for every
    failure that is not the broker's own answer about the order: transport failures, 429, 401
    and 403-as-auth, and 5xx. Other 4xx answers are returned for the adapter to read.

    A pooled keep-alive connection the server closed while it sat idle, found so only when the
    request's head could not be written to it, is no answer: the request is sent once more, on
    another connection (the failed one is dropped). Once the head was written the failure stays
    what it is (ambiguous for a POST): the broker may have read the request. An idempotent
    request (a read, a cancel's DELETE) is sent once more either way: twice has the effect of
    once (RFC 9110, 9.2.2), and the answer is what the caller needs."""

    def build() -> httpx.Request:
        request = client.build_request(method, path, **kwargs)
        if sign is not None:
            sign(request)
        return request

    async def sending() -> httpx.Response:
        request = build()
        unwritten = _HeadUnwritten()
        request.extensions["trace"] = unwritten.note
        try:
            return await client.send(request)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            if not unwritten.proven and method.upper() not in IDEMPOTENT:
                raise
        return await client.send(build())

    return await answer(broker, method, path, sending())


class _HeadUnwritten:
    """Watches httpcore's trace of one request for proof that its head (request line and
    headers) was never written whole: httpcore swallows that write error and reports the closed
    connection only when it reads the answer, as if the request had been sent."""

    def __init__(self) -> None:
        self.proven = False

    async def note(self, event: str, info: dict[str, Any]) -> None:
        if event == "http11.send_request_headers.failed":
            self.proven = True


async def answer(broker: str, method: str, path: str, sending: Awaitable[httpx.Response]) -> httpx.Response:
    """The broker's answer to a request being sent (by this module or by a broker's SDK on
    ``httpx``), with every failure that is not the broker's own answer about the order raised
    as its venue error (see ``send``)."""
    try:
        response = await sending
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise VenueUnavailable(f"{broker}: {method} {path} did not reach the broker ({_name(exc)})") from None
    except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError, httpx.ReadError) as exc:
        if method == "GET":
            raise VenueUnavailable(f"{broker}: {method} {path} got no answer ({_name(exc)})") from None
        raise VenueAmbiguous(f"{broker}: {method} {path} was sent but got no answer ({_name(exc)})") from None
    except httpx.TransportError as exc:
        raise VenueUnavailable(f"{broker}: {method} {path} failed ({_name(exc)})") from None
    if response.status_code == 429:
        raise VenueRateLimited(
            f"{broker}: 429 too many requests ({method} {path})", retry_after=retry_after(response.headers)
        )
    if response.status_code == 401:
        raise VenueAuthFailed(f"{broker}: the credentials were refused (401): {_summary(response)}")
    if response.status_code >= 500:
        if method == "GET":
            raise VenueUnavailable(f"{broker}: {response.status_code} from {method} {path}")
        raise VenueAmbiguous(f"{broker}: {response.status_code} to {method} {path}; the outcome is unknown")
    return response


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float:
    """Seconds until the broker allows requests again: ``Retry-After`` (seconds or an HTTP date),
    else ``X-RateLimit-Reset`` (a UNIX time), else a second."""
    now = time.time() if now is None else now
    value = headers.get("retry-after")
    if value:
        try:
            return max(float(value), 0.0)
        except ValueError:
            try:
                return max(parsedate_to_datetime(value).timestamp() - now, 0.0)
            except (TypeError, ValueError):
                pass
    reset = headers.get("x-ratelimit-reset")
    if reset:
        try:
            return max(float(reset) - now, 0.0)
        except ValueError:
            pass
    return DEFAULT_RETRY_AFTER_S


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time from a broker (``Z`` and nanoseconds allowed, which Python's parser
    does not take), or None when empty."""
    if not value:
        return None
    return datetime.fromisoformat(_FRACTION.sub(r"\1", str(value)).replace("Z", "+00:00"))


def error_text(response: httpx.Response) -> str:
    """The broker's message from an error answer (JSON ``message`` or ``error``), else the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        for key in ("message", "error", "error_message", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return str(body)[:300]


def _summary(response: httpx.Response) -> str:
    return error_text(response) or response.reason_phrase


def _name(exc: Exception) -> str:
    return type(exc).__name__
