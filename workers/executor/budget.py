"""A broker's rate budget, shared by every replica of its executor through NATS KV.

Token buckets kept in one KV key per broker (bucket ``<prefix>_rate_budgets``), one bucket per
window the broker enforces (Coinbase: 30 a second; Alpaca: 200 a minute; a config may list
several), updated together with one compare-and-set, so replicas in any number of processes
together stay under every window. Every request an adapter sends counts: the adapter awaits the
budget (its ``RequestGate``) before each request, whatever asked for it (placing, looking up,
cancelling, the fill reads after them, the stream's reads, account and position snapshots).

Staying under a sliding-window limit of L requests per W seconds (``workers/domain/rates.py``
has the numbers): tokens are minted at rate
``r = (share * L - burst) / (W + LEASE_TTL)`` and the bucket holds at most ``burst``. A replica
may take several tokens in one compare-and-set (a lease of at most ``lease``, a quarter of the
burst and what ``LEASE_TTL`` mints, the smallest over the windows) and spend them within
``LEASE_TTL`` seconds, after which what is left is dropped. A request in a window of W seconds
spends a token taken at most ``LEASE_TTL`` before it, so any W seconds see at most
``burst + r * (W + LEASE_TTL) = share * L`` requests; a request takes a token from every
window's bucket, so this holds for each window. For the documented limits (a few requests a
second) the lease is one token: leasing matters only where the limit is high enough for the KV
round trips to be the bottleneck. A 429 answer to any request (``refused``) empties the buckets
until the broker's reset time (``retry_after``: Alpaca's ``X-RateLimit-Reset``, the end of its
window), for every replica.

A caller waits for a token at most ``max_wait`` seconds (its own ``timeout``); when the wait
would be longer it gets ``RateBudgetExhausted`` at once, a ``VenueUnavailable`` (nothing was
sent) whose ``retry_after`` is the budget's wait.

``headroom`` is the share of the budget the recent load and the requests waiting for a token
leave: 1 idle, 0 saturated, blocked, or with a queue of requests. It goes out in BrokerStatus
so the router can avoid a broker near its limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from workers.domain.rates import LEASE_TTL, RateLimit, lease_of, sustained_rate
from workers.domain.venue import VenueUnavailable
from workers.platform import metrics, telemetry
from workers.platform.bus import JetStream, LazyBucket, update_int

LOAD_WINDOW = 5.0
"""Seconds over which the recent load (for headroom) is averaged."""
MAX_WAIT = 30.0
"""Seconds a caller waits for a token before giving up (its message is retried later)."""

_GRANTED: ContextVar[list[int] | None] = ContextVar("rate_tokens_granted", default=None)
"""Tokens granted inside ``RateBudget.tally`` (a list, so the tasks it starts count into it)."""


class RateBudgetExhausted(VenueUnavailable):
    """No token comes within the caller's wait: nothing was sent to the broker. ``retry_after``
    is the budget's wait, in seconds until a token."""

    reason_code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(slots=True)
class _Bucket:
    tokens: list[float]
    """One bucket per window, in the order of the budget's limits."""
    at: float
    load: float = 0.0
    blocked_until: float = 0.0

    @classmethod
    def full(cls, limits: tuple[RateLimit, ...], now: float) -> _Bucket:
        return cls(tokens=[limit.burst for limit in limits], at=now)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> _Bucket:
        """The stored state (a single window's tokens are one number); ``refill`` fits it to
        the limits."""
        stored = raw["tokens"] if isinstance(raw["tokens"], list) else [raw["tokens"]]
        tokens = [float(t) for t in stored]
        return cls(tokens, float(raw["at"]), float(raw.get("load", 0.0)), float(raw.get("blocked_until", 0.0)))

    def dump(self) -> str:
        # One window is stored as one number, as before several windows were possible, so a
        # replica of the earlier release still reads it during a rolling upgrade.
        tokens: float | list[float] = self.tokens[0] if len(self.tokens) == 1 else self.tokens
        return json.dumps({"tokens": tokens, "at": self.at, "load": self.load, "blocked_until": self.blocked_until})

    def refill(self, limits: tuple[RateLimit, ...], now: float) -> None:
        elapsed = max(now - self.at, 0.0)
        # The limits may have changed since the state was read: a new window starts full.
        tokens = self.tokens[: len(limits)] + [limit.burst for limit in limits[len(self.tokens) :]]
        self.tokens = [min(limit.burst, t + elapsed * limit.rate) for t, limit in zip(tokens, limits, strict=True)]
        self.load *= math.exp(-elapsed / LOAD_WINDOW)
        self.at = now

    def wait(self, limits: tuple[RateLimit, ...], now: float) -> float:
        """Seconds until every window has a token (0: now)."""
        short = max((1.0 - t) / limit.rate for t, limit in zip(self.tokens, limits, strict=True))
        return max(self.blocked_until - now, short, 0.0)


def _windows_text(limits: tuple[RateLimit, ...]) -> str:
    return ", ".join(f"{limit.requests} per {limit.per_seconds:g}s" for limit in limits)


class RateBudget:
    """The broker's request budget; also the ``RequestGate`` its adapter awaits before each
    request (``take``) and tells of each 429 (``refused``)."""

    def __init__(
        self,
        js: Callable[[], JetStream],
        bucket: str,
        key: str,
        limits: RateLimit | tuple[RateLimit, ...],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.limits = limits if isinstance(limits, tuple) else (limits,)
        """The windows, each enforced (the worker replaces them when the config changes)."""
        self.max_wait: Callable[[], float] = lambda: MAX_WAIT
        """Seconds ``take()`` waits for a token by default (the worker keeps it within a broker
        call's deadline, so a wait for the budget is never taken for a broker that did not answer)."""
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
            return _Bucket.full(self.limits, self._clock()), None
        if not entry.value:
            return _Bucket.full(self.limits, self._clock()), entry.revision
        return _Bucket.parse(json.loads(entry.value)), entry.revision

    async def _write(self, state: _Bucket, revision: int | None) -> bool:
        kv = await self._store()
        raw = state.dump()
        try:
            if revision is None:
                await kv.create(self.key, raw.encode())
            else:
                await kv.update(self.key, raw.encode(), last=revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def take(self, timeout: float | None = None) -> None:
        """Wait for a token (at most ``timeout`` seconds, default ``max_wait``) and spend it;
        raise ``RateBudgetExhausted`` at once when the wait would be longer. The process-wide
        lock is held only while taking, never while waiting, so one slow caller cannot stall
        the rest."""
        with telemetry.span("rate-wait", broker=self.key):
            await self._take(self.max_wait() if timeout is None else timeout)

    async def _take(self, timeout: float) -> None:
        started = time.monotonic()
        deadline = started + timeout
        while True:
            async with self._lock:
                if self._leased > 0 and self._clock() < self._lease_ends:
                    self._leased -= 1
                    wait = 0.0
                else:
                    wait = await self._try_take()
            if wait <= 0:
                self._granted(time.monotonic() - started)
                return
            if time.monotonic() + wait > deadline:
                raise RateBudgetExhausted(
                    f"no {self.key} rate token within {timeout:g}s (the next in {wait:.1f}s; limit "
                    f"{_windows_text(self.limits)}); the request was not sent",
                    retry_after=wait,
                )
            self.waited += wait
            self.waiting += 1
            try:
                await asyncio.sleep(wait)
            finally:
                self.waiting -= 1

    def _granted(self, waited: float) -> None:
        metrics.RATE_WAIT_SECONDS.labels(self.key).observe(waited)
        granted = _GRANTED.get()
        if granted is not None:
            granted[0] += 1

    @staticmethod
    @contextlib.contextmanager
    def tally() -> Iterator[list[int]]:
        """Count the tokens granted inside (``[n]``): whether a refused call sent anything first."""
        granted = [0]
        reset = _GRANTED.set(granted)
        try:
            yield granted
        finally:
            _GRANTED.reset(reset)

    async def until_token(self) -> float:
        """Seconds until a token may be there (0: now), without taking or waiting."""
        if self._leased > 0 and self._clock() < self._lease_ends:
            return 0.0
        state, _ = await self._read()
        now = self._clock()
        state.refill(self.limits, now)
        return state.wait(self.limits, now)

    async def _try_take(self) -> float:
        """Take a token from every window (0 returned), or say how long until one may be there."""
        while True:
            state, revision = await self._read()
            now = self._clock()
            state.refill(self.limits, now)
            if now >= state.blocked_until and min(state.tokens) >= 1.0:
                taken = min(lease_of(self.limits), math.floor(min(state.tokens)))
                state.tokens = [t - taken for t in state.tokens]
                state.load += taken
                if await self._write(state, revision):
                    self._leased, self._lease_ends = taken - 1, now + LEASE_TTL
                    return 0.0
                continue  # another replica took one meanwhile: read again
            return max(state.wait(self.limits, now), 0.001)

    async def refused(self, retry_after: float) -> None:
        """The broker answered 429 to a request: nobody sends before its reset time."""
        await self.block(retry_after)

    async def block(self, retry_after: float) -> None:
        """The broker answered 429: nobody sends before its reset time."""
        self._leased = 0
        while True:
            state, revision = await self._read()
            now = self._clock()
            state.refill(self.limits, now)
            state.tokens = [0.0 for _ in state.tokens]
            floor = 1.0 / sustained_rate(self.limits)
            state.blocked_until = max(state.blocked_until, now + max(retry_after, floor))
            if await self._write(state, revision):
                return

    async def headroom(self) -> float:
        state, _ = await self._read()
        now = self._clock()
        state.refill(self.limits, now)
        if now < state.blocked_until:
            return 0.0
        capacity = sustained_rate(self.limits) * LOAD_WINDOW
        # Requests waiting for a token are load the budget has not granted yet: counted, a
        # saturated broker never looks idle between two grants.
        return round(max(0.0, min(1.0, 1.0 - (state.load + self.waiting) / capacity)), 4)


DAY_S = 86_400
DAILY_SHARE = 0.9
"""The part of a daily order limit new orders may use: the rest is kept for cancels."""


class DailyOrdersSpent(VenueUnavailable):
    """The day's order calls are used up: nothing was sent (new orders go to other brokers);
    ``retry_after`` is the time left until 00:00 UTC."""

    reason_code = "daily_order_cap"


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
        key = self._key(day)

        def one_more(used: int) -> int:
            if used >= cap:
                if placement:
                    self._spent_on = day
                raise DailyOrdersSpent(self._spent_text(used), DAY_S - self._clock() % DAY_S)
            return used + 1

        await update_int(await self._store(), key, one_more)

    @contextlib.asynccontextmanager
    async def order_call(self, budget: RateBudget, *, placement: bool) -> AsyncIterator[None]:
        """Count one order call around sending it. A call the rate budget refused before any of
        its requests went out was never sent: it is given back, so a budget refusal spends none
        of the day's calls."""
        day = self._day()
        await self.take(placement=placement)
        with budget.tally() as granted:
            try:
                yield
            except RateBudgetExhausted:
                if self.per_day is not None and not granted[0]:
                    await update_int(await self._store(), self._key(day), lambda used: max(used - 1, 0))
                raise

    def _key(self, day: str) -> str:
        return f"{self.broker}.orders.{day}"

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
