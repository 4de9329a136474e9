"""A broker's side of its rate limit, for the fakes: it counts every request that reaches the
broker against the documented limit and refuses the ones past it with a 429, as the broker
would. What it counts is what a bad-day test checks: ``refused`` must stay 0 when mbx keeps to
the limit it knows (the 429s a test scripts are counted apart, by the fake's faults).

``FixedWindow`` is Alpaca's model (200 a minute per account; ``X-RateLimit-Reset`` is the end of
the current window, in UNIX seconds). ``TokenBucket`` is Coinbase's and Robinhood Crypto's
(a continuously refilling allowance with a burst; the next token's time is the reset).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class FixedWindow:
    """At most ``limit`` requests in each ``per_seconds`` window, windows aligned to ``start``."""

    limit: int
    per_seconds: float
    start: float = field(default_factory=time.time)
    peak: int = 0
    """The most requests seen in one window (refused ones included)."""
    refused: int = 0
    """Requests answered 429 because the window was full."""
    before_reset: int = 0
    """Requests answered 429 because they came before the reset of a 429 already answered in
    this window (a client that honours ``X-RateLimit-Reset`` sends none)."""
    _index: int = -1
    _count: int = 0
    _closed: int = -1

    def end_current_at(self, at: float, now: float | None = None) -> None:
        """Move the window boundaries (not the count) so that the current window ends at ``at``
        (UNIX seconds, less than a window from now): where an account's windows fall is the
        broker's business, and a test places a 429 at a window's start this way."""
        now = time.time() if now is None else now
        assert 0 < at - now <= self.per_seconds, "the current window can end only within a window from now"
        self.start = at - (self._window(now) + 1) * self.per_seconds

    def close(self, now: float | None = None) -> None:
        """The broker has answered 429 in this window: nothing more until its end."""
        self._closed = self._window(now)

    def admit(self, now: float | None = None) -> bool:
        """Count one request; False when it is past the limit (the broker answers 429)."""
        index = self._window(now)
        if index == self._closed:
            self.before_reset += 1
            return False
        if index != self._index:
            self._index, self._count = index, 0
        self._count += 1
        self.peak = max(self.peak, self._count)
        if self._count > self.limit:
            self.refused += 1
            return False
        return True

    def remaining(self, now: float | None = None) -> int:
        return max(self.limit - (self._count if self._window(now) == self._index else 0), 0)

    def reset_at(self, now: float | None = None) -> int:
        """The end of the current window, as UNIX seconds (rounded up: Alpaca sends integers)."""
        return math.ceil(self.start + (self._window(now) + 1) * self.per_seconds)

    def elapsed(self, now: float | None = None) -> float:
        """Seconds since the current window began."""
        now = time.time() if now is None else now
        return (now - self.start) % self.per_seconds

    def stats(self) -> dict[str, float | int]:
        return {
            "limit": self.limit,
            "per_seconds": self.per_seconds,
            "peak": self.peak,
            "refused": self.refused,
            "before_reset": self.before_reset,
        }

    def _window(self, now: float | None) -> int:
        now = time.time() if now is None else now
        return int((now - self.start) // self.per_seconds)


@dataclass
class TokenBucket:
    """``rate`` requests a second on average, bursts up to ``burst``; refilled continuously."""

    rate: float
    burst: int
    refused: int = 0
    lowest: float = field(init=False)
    """The fewest tokens left after a request (negative never: refused requests take none)."""
    _tokens: float = field(init=False)
    _at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._tokens = self.lowest = float(self.burst)

    def admit(self, now: float | None = None) -> bool:
        self._refill(now)
        if self._tokens < 1:
            self.refused += 1
            return False
        self._tokens -= 1
        self.lowest = min(self.lowest, self._tokens)
        return True

    def reset_in(self, now: float | None = None) -> float:
        """Seconds until the next request would be admitted."""
        self._refill(now)
        return max((1 - self._tokens) / self.rate, 0.0)

    def stats(self) -> dict[str, float | int]:
        return {"rate": self.rate, "burst": self.burst, "lowest": self.lowest, "refused": self.refused}

    def _refill(self, now: float | None) -> None:
        now = time.monotonic() if now is None else now
        self._tokens = min(self._tokens + (now - self._at) * self.rate, float(self.burst))
        self._at = now
