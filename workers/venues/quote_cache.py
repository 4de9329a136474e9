"""What every market-data quote source shares: a quote per symbol kept ``cache_s`` seconds, at
most ``requests_per_minute`` requests sent, and a quote that cannot be had is None (the router
then routes as without a quote) rather than an error."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque

import httpx
import structlog

from workers.domain.quotes import Quote
from workers.domain.venue import VenueError

log = structlog.get_logger("mbx.quotes")


class CachedQuotes(ABC):
    name = ""

    def __init__(self, client: httpx.AsyncClient | None, *, requests_per_minute: int, cache_s: float) -> None:
        """``client``: the HTTP client a source sends through (None: the source has its own way)."""
        self._client = client
        self._limit = requests_per_minute
        self._cache_s = cache_s
        self._sent: deque[float] = deque()
        self._cache: dict[str, tuple[float, Quote | None]] = {}

    async def quote(self, symbol: str) -> Quote | None:
        if not self.covers(symbol):
            return None
        now = time.monotonic()
        cached = self._cache.get(symbol)
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        if not self._may_send(now):
            return cached[1] if cached else None  # the last one, whose age the router judges
        try:
            found = await self._fetch(symbol)
        except (VenueError, httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            log.warning("no quote", source=self.name, symbol=symbol, error=f"{type(exc).__name__}: {exc}")
            found = None
        self._cache[symbol] = (now, found)
        return found

    @property
    def _http(self) -> httpx.AsyncClient:
        """The HTTP client of a source that has one."""
        if self._client is None:
            raise TypeError(f"the {self.name} quote source sends no HTTP")
        return self._client

    def _may_send(self, now: float) -> bool:
        while self._sent and self._sent[0] <= now - 60.0:
            self._sent.popleft()
        if len(self._sent) >= self._limit:
            return False
        self._sent.append(now)
        return True

    def covers(self, symbol: str) -> bool:
        """Whether the source quotes ``symbol`` at all (no request is spent on one it does not)."""
        return bool(symbol)

    @abstractmethod
    async def _fetch(self, symbol: str) -> Quote | None:
        """Ask the source for ``symbol``'s quote (None: it has none)."""

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
