"""What the HTTP broker adapters share: the pooled client's life, the broker's health as the
requests find it (``down_because``), and a stream that reconnects by itself.

An adapter sets ``broker`` and ``renew_hint`` (the variables an operator renews when the keys
are refused), and sends every request through ``_send``, which counts it against the rate
budget the executor hands in (``use_gate``): so the reads an adapter makes on its own (fills
after a placement or a stream frame, the order after a cancel, snapshots) are counted too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import structlog
import websockets

from contracts import AssetClass, BrokerName, OrderStatus
from workers.domain.capabilities import CAPABILITIES, VenueCapabilities
from workers.domain.venue import (
    OpenGate,
    RequestGate,
    VenueAmbiguous,
    VenueAuthFailed,
    VenueError,
    VenueOrder,
    VenueRateLimited,
    VenueUnavailable,
)
from workers.venues.http import error_text, make_client, send

log = structlog.get_logger("mbx.venues")
T = TypeVar("T")

STREAM_BACKOFF = (0.5, 30.0)
"""First and longest pause before a stream reconnects (reconnect storms get 429s)."""


class StreamRefused(Exception):
    """The broker's stream did not accept the credentials."""


class HttpVenue:
    broker: BrokerName
    renew_hint = ""
    read_prefix = ""
    """Put before the paths ``_get`` reads."""
    not_found: tuple[int, ...] = (404,)
    """Answers to a read that mean "no such thing" (None), not a failure."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float,
        *,
        headers: dict[str, str] | None = None,
        sign: Callable[[httpx.Request], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._headers = headers or {}
        self._sign = sign
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._down_because = "not connected yet"
        self._gate: RequestGate = OpenGate()

    def use_gate(self, gate: RequestGate) -> None:
        """Count every request against ``gate`` (the executor's rate budget), and tell it of 429s."""
        self._gate = gate

    @property
    def capabilities(self) -> VenueCapabilities:
        return CAPABILITIES[self.broker]

    def supported_assets(self) -> frozenset[AssetClass]:
        return frozenset(self.capabilities.assets)

    @property
    def is_connected(self) -> bool:
        return self._client is not None and not self._down_because

    @property
    def down_because(self) -> str:
        """Why the broker counts as down ("" when it is up), in words an operator can act on."""
        return self._down_because

    async def connect(self) -> None:
        if self._client is None:
            self._client = make_client(
                self._base_url, self._timeout_s, headers=self._headers, transport=self._transport
            )
        try:
            await self._probe()
        except VenueUnavailable as exc:  # the executor starts anyway and keeps trying
            log.warning("broker not reachable yet", broker=str(self.broker), error=str(exc))

    async def _probe(self) -> None:
        """One cheap authenticated read, to learn at start whether the broker answers."""

    async def disconnect(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, counted against the rate budget first (a refusal from the budget says
        nothing of the broker's health); its failure or success updates ``down_because``, and a
        429 blocks the budget until the broker's reset."""
        if self._client is None:
            raise VenueUnavailable(f"{self.broker}: not connected")
        await self._gate.take()
        try:
            response = await send(self._client, str(self.broker), method, path, sign=self._sign, **kwargs)
        except VenueAuthFailed as exc:
            self._down_because = f"{exc}; renew {self.renew_hint}"
            raise
        except VenueRateLimited as exc:
            await self._gate.refused(exc.retry_after)
            raise  # up, but asking us to wait
        except VenueUnavailable as exc:
            self._down_because = str(exc)
            raise
        if response.status_code == 403 and method == "GET":
            self._down_because = f"{self.broker}: access refused (403): {error_text(response)}; renew {self.renew_hint}"
            raise VenueAuthFailed(self._down_because)
        self._down_because = ""
        return response

    async def _get(self, path: str, **params: Any) -> Any:
        """A read: its JSON, or None when the broker has no such thing."""
        response = await self._send("GET", self.read_prefix + path, params=params or None)
        if response.status_code in self.not_found:
            return None
        response.raise_for_status()
        return response.json()

    async def _follow(
        self,
        url: str,
        session: Callable[[Any, Callable[[], Awaitable[None]]], Awaitable[None]],
        on_connect: Callable[[], Awaitable[None]],
    ) -> None:
        """Run ``session`` on a websocket to ``url`` until cancelled, reconnecting with backoff
        when it drops; ``session`` subscribes, calls the ``connected`` it is given once the
        broker accepted, then reads frames."""
        pause = STREAM_BACKOFF[0]
        while True:

            async def connected() -> None:
                nonlocal pause
                pause = STREAM_BACKOFF[0]
                log.info("broker stream connected", broker=str(self.broker))
                await on_connect()

            try:
                async with websockets.connect(url, open_timeout=self._timeout_s) as ws:
                    await session(ws, connected)
            except StreamRefused as exc:
                self._down_because = f"{exc}; renew {self.renew_hint}"
                log.error("broker stream refused", broker=str(self.broker), error=str(exc))
                pause = STREAM_BACKOFF[1]
            except (OSError, TimeoutError, ValueError, websockets.ConnectionClosed, websockets.InvalidHandshake) as exc:
                log.warning(
                    "broker stream lost; reconnecting",
                    broker=str(self.broker),
                    error=type(exc).__name__,
                    retry_in_s=pause,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, STREAM_BACKOFF[1])


def as_far_as_known(order: VenueOrder) -> VenueOrder:
    """The order as far as its executions are known. A broker's execution list can lag its
    order totals: an order shown filled (or ended) before all its executions are listed is
    reported as still partly filled, so it stays working in the ledger and the missing
    executions are reported when they appear, never lost behind a final report."""
    known = sum((f.quantity for f in order.fills), Decimal(0))
    if known >= order.filled_quantity:
        return order
    order.filled_quantity = known
    order.status = OrderStatus.PARTIALLY_FILLED if known > 0 else OrderStatus.ACCEPTED
    return order


async def read_after_placing(read: Callable[[], Awaitable[T]], broker: str) -> T:
    """Read an order the broker just accepted. A failure to read it is not a failure to place
    it: the outcome is ambiguous (the executor looks it up), never "did not reach the broker"."""
    try:
        return await read()
    except VenueError as exc:
        raise VenueAmbiguous(f"{broker} accepted the order but it could not be read back: {exc}") from exc
