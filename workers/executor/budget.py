"""A broker's rate budget, shared by every replica of its executor through NATS KV.

A token bucket kept in one KV key per broker (bucket ``<prefix>_rate_budgets``), updated with
compare-and-set, so replicas in any number of processes together stay under the broker's limit.
Every request to the broker takes a token first: placing, looking up, cancelling, account and
position snapshots.

Staying under a sliding-window limit of L requests per W seconds (``workers/domain/rates.py``
has the numbers): tokens are minted at rate
``r = (share * L - burst) / (W + LEASE_TTL)`` and the bucket holds at most ``burst``. A replica
may take several tokens in one compare-and-set (a lease of at most ``lease``, a quarter of the
burst and what ``LEASE_TTL`` mints) and spend them within ``LEASE_TTL`` seconds, after which
what is left is dropped. A request in a window of W seconds spends a token taken at most
``LEASE_TTL`` before it, so any W seconds see at most ``burst + r * (W + LEASE_TTL) = share * L``
requests. For the documented limits (a few requests a second) the lease is one token: leasing
matters only where the limit is high enough for the KV round trips to be the bottleneck. A 429
answer empties the bucket until the broker's reset time (``retry_after``), for every replica.

``headroom`` is the share of the budget the recent load and the requests waiting for a token
leave: 1 idle, 0 saturated, blocked, or with a queue of requests. It goes out in BrokerStatus
so the router can avoid a broker near its limit.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from workers.domain.rates import LEASE_TTL, RateLimit
from workers.domain.venue import VenueUnavailable
from workers.platform.bus import JetStream, LazyBucket, update_int

LOAD_WINDOW = 5.0
"""Seconds over which the recent load (for headroom) is averaged."""
MAX_WAIT = 30.0
"""Seconds a caller waits for a token before giving up (its message is retried later)."""


class RateBudgetExhausted(Exception):
    """No token came within the wait: nothing was sent to the broker (transient, retried)."""


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
        js: Callable[[], JetStream],
        bucket: str,
        key: str,
        limit: RateLimit,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.limit = limit
        self._clock = clock  # wall clock: replicas in other processes share it
        self._store = LazyBucket(js, bucket)
        self.waited = 0.0
        self.waiting = 0
        """Callers of this process waiting for a token right now."""
        self._lock = asyncio.Lock()  # this process's callers queue here rather than race on CAS
        self._leased = 0  # tokens taken ahead, spendable until _lease_ends
        self._lease_ends = 0.0

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

    async def take(self, timeout: float = MAX_WAIT) -> None:
        """Wait for a token (at most ``timeout`` seconds) and spend it. The process-wide lock is
        held only while taking, never while waiting, so one slow caller cannot stall the rest."""
        deadline = time.monotonic() + timeout
        while True:
            async with self._lock:
                if self._leased > 0 and self._clock() < self._lease_ends:
                    self._leased -= 1
                    return
                wait = await self._try_take()
            if wait <= 0:
                return
            if time.monotonic() + wait > deadline:
                raise RateBudgetExhausted(
                    f"no {self.key} rate token within {timeout:.0f}s (limit {self.limit.requests} per "
                    f"{self.limit.per_seconds:g}s); the request was not sent"
                )
            self.waited += wait
            self.waiting += 1
            try:
                await asyncio.sleep(wait)
            finally:
                self.waiting -= 1

    async def _try_take(self) -> float:
        """Take a token (0 returned), or say how long until one may be there."""
        while True:
            state, revision = await self._read()
            now = self._clock()
            state.refill(self.limit, now)
            if now >= state.blocked_until and state.tokens >= 1.0:
                taken = min(self.limit.lease, math.floor(state.tokens))
                state.tokens -= taken
                state.load += taken
                if await self._write(state, revision):
                    self._leased, self._lease_ends = taken - 1, now + LEASE_TTL
                    return 0.0
                continue  # another replica took one meanwhile: read again
            return max(state.blocked_until - now, (1.0 - state.tokens) / self.limit.rate, 0.001)

    async def block(self, retry_after: float) -> None:
        """The broker answered 429: nobody sends before its reset time."""
        self._leased = 0
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
        # Requests waiting for a token are load the budget has not granted yet: counted, a
        # saturated broker never looks idle between two grants.
        return round(max(0.0, min(1.0, 1.0 - (state.load + self.waiting) / capacity)), 4)


DAILY_SHARE = 0.9
"""The part of a daily order limit new orders may use: the rest is kept for cancels."""


class DailyOrdersSpent(VenueUnavailable):
    """The day's order calls are used up: nothing was sent (new orders go to other brokers)."""


class DailyOrderBudget:
    """The order calls (placements and cancels) a broker allows per day (Schwab: 4,000), counted
    for every replica in one KV key per UTC day, incremented with compare-and-set before each
    call. New orders stop at ``DAILY_SHARE`` of the limit, so cancels, which reduce risk, still
    have the rest; until the next day the broker counts as down with that reason."""

    def __init__(
        self,
        js: Callable[[], JetStream],
        bucket: str,
        broker: str,
        per_day: int | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.per_day = per_day
        self._clock = clock
        self._store = LazyBucket(js, bucket)
        self._spent_on = ""
        """The day (YYYYMMDD) on which new orders were last refused."""

    def _day(self) -> str:
        return time.strftime("%Y%m%d", time.gmtime(self._clock()))

    async def take(self, *, placement: bool) -> None:
        """Count one order call, or raise ``DailyOrdersSpent`` without counting it."""
        if self.per_day is None:
            return
        day = self._day()
        cap = math.floor(DAILY_SHARE * self.per_day) if placement else self.per_day
        key = f"{self.broker}.orders.{day}"

        def one_more(used: int) -> int:
            if used >= cap:
                if placement:
                    self._spent_on = day
                raise DailyOrdersSpent(self._spent_text(used))
            return used + 1

        await update_int(await self._store(), key, one_more)

    def _spent_text(self, used: int) -> str:
        return (
            f"{self.broker}: {used:,} of the day's {self.per_day:,} order calls are used (the rest is kept for "
            "cancels); new orders go to other brokers until 00:00 UTC"
        )

    def spent_reason(self) -> str:
        """Why the broker takes no new orders today ("" when it does)."""
        if not self._spent_on or self._spent_on != self._day() or self.per_day is None:
            return ""
        return self._spent_text(math.floor(DAILY_SHARE * self.per_day))
