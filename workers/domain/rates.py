"""What a broker's request limits allow mbx to send: the token buckets every executor replica
shares (``workers/executor/budget.py`` keeps them), in numbers. Pure.

A broker may hold several windows at once (say 30 a second and 1,800 a minute): each is a
``RateLimit``, and a request takes a token from every window's bucket. Staying under a
sliding-window limit of L requests per W seconds: tokens are minted at rate
``r = (share * L - burst) / (W + LEASE_TTL)`` and the bucket holds at most ``burst``; see the
budget's module for why no window then sees more than ``share * L``. The router reckons queue
waits with the slowest window's rate (``sustained_rate``), so what it expects is what the
executors will do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEASE_TTL = 0.1
"""Seconds a replica may hold tokens it took ahead before they are dropped."""
MAX_LEASE = 100
"""Most tokens taken ahead at once, whatever the limit, so replicas share the budget."""


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
        return max((self.share * self.requests - self.burst) / (self.per_seconds + LEASE_TTL), 1e-6)

    @property
    def lease(self) -> int:
        """Most tokens one compare-and-set may take ahead: a quarter of the burst, and no more
        than ``LEASE_TTL`` mints, so replicas still share the budget."""
        return max(1, math.floor(min(self.burst / 4, self.rate * LEASE_TTL, MAX_LEASE)))


def sustained_rate(limits: tuple[RateLimit, ...]) -> float:
    """Requests a second every window allows when kept up: the slowest window's rate."""
    return min(limit.rate for limit in limits)


def lease_of(limits: tuple[RateLimit, ...]) -> int:
    """Most tokens one compare-and-set may take ahead: what every window allows."""
    return min(limit.lease for limit in limits)
