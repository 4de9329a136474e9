"""A broker's rate budget, shared by every replica of its executor through NATS KV.

A token bucket kept in one KV key per broker (bucket ``<prefix>_rate_budgets``), updated with
compare-and-set, so replicas in any number of processes together stay under the broker's limit.
Every request to the broker takes a token first: placing, looking up, cancelling, account and
position snapshots.

Staying under a sliding-window limit of L requests per W seconds: tokens are minted at rate
``r = (share * L - burst) / W`` and the bucket holds at most ``burst``, so any W seconds see at
most ``burst + r * W = share * L`` requests. A 429 answer empties the bucket until the broker's
reset time (``retry_after``), for every replica.

``headroom`` is the share of the budget the recent load leaves: 1 idle, 0 saturated or blocked.
It goes out in BrokerStatus so the router can avoid a broker near its limit.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from workers.bus import open_bucket

LOAD_WINDOW = 5.0
"""Seconds over which the recent load (for headroom) is averaged."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests: int
    per_seconds: float
    share: float = 0.9
    """The part of the broker's limit mbx uses, leaving room for clock and network jitter."""

    @property
    def burst(self) -> float:
        """A twentieth of the window's budget at once (at least one request)."""
        return float(max(1, math.floor(0.05 * self.share * self.requests)))

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return max((self.share * self.requests - self.burst) / self.per_seconds, 1e-6)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    load: float = 0.0
    blocked_until: float = 0.0

    def refill(self, limit: RateLimit, now: float) -> None:
        elapsed = max(now - self.at, 0.0)
        self.tokens = min(limit.burst, self.tokens + elapsed * limit.rate)
        self.load *= math.exp(-elapsed / LOAD_WINDOW)
        self.at = now


class RateBudget:
    def __init__(
        self,
        js: Callable[[], JetStreamContext],
        bucket: str,
        key: str,
        limit: RateLimit,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._js = js
        self._bucket = bucket
        self.key = key
        self.limit = limit
        self._clock = clock  # wall clock: replicas in other processes share it
        self._kv: Any = None
        self.waited = 0.0
        self._lock = asyncio.Lock()  # this process's callers queue here rather than race on CAS

    async def _store(self) -> Any:
        if self._kv is None:
            self._kv = await open_bucket(self._js(), self._bucket)
        return self._kv

    async def _read(self) -> tuple[_Bucket, int | None]:
        kv = await self._store()
        try:
            entry = await kv.get(self.key)
        except KeyNotFoundError:
            return _Bucket(tokens=self.limit.burst, at=self._clock()), None
        if not entry.value:
            return _Bucket(tokens=self.limit.burst, at=self._clock()), entry.revision
        return _Bucket(**json.loads(entry.value)), entry.revision

    async def _write(self, state: _Bucket, revision: int | None) -> bool:
        kv = await self._store()
        raw = json.dumps(
            {"tokens": state.tokens, "at": state.at, "load": state.load, "blocked_until": state.blocked_until}
        )
        try:
            if revision is None:
                await kv.create(self.key, raw.encode())
            else:
                await kv.update(self.key, raw.encode(), last=revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def take(self) -> None:
        """Wait for a token and spend it."""
        async with self._lock:
            await self._take()

    async def _take(self) -> None:
        while True:
            state, revision = await self._read()
            now = self._clock()
            state.refill(self.limit, now)
            if now >= state.blocked_until and state.tokens >= 1.0:
                state.tokens -= 1.0
                state.load += 1.0
                if await self._write(state, revision):
                    return
                continue  # another replica took one meanwhile: read again
            wait = max(state.blocked_until - now, (1.0 - state.tokens) / self.limit.rate, 0.001)
            self.waited += wait
            await asyncio.sleep(wait)

    async def block(self, retry_after: float) -> None:
        """The broker answered 429: nobody sends before its reset time."""
        while True:
            state, revision = await self._read()
            now = self._clock()
            state.refill(self.limit, now)
            state.tokens = 0.0
            state.blocked_until = max(state.blocked_until, now + max(retry_after, 1.0 / self.limit.rate))
            if await self._write(state, revision):
                return

    async def headroom(self) -> float:
        state, _ = await self._read()
        now = self._clock()
        state.refill(self.limit, now)
        if now < state.blocked_until:
            return 0.0
        capacity = self.limit.rate * LOAD_WINDOW
        return round(max(0.0, min(1.0, 1.0 - state.load / capacity)), 4)
