"""What a broker's request limit allows mbx to send: the token bucket every executor replica
shares (``workers/executor/budget.py`` keeps it), in numbers. Pure.

Staying under a sliding-window limit of L requests per W seconds: tokens are minted at rate
``r = (share * L - burst) / (W + LEASE_TTL)`` and the bucket holds at most ``burst``; see the
budget's module for why no window then sees more than ``share * L``. The router reckons queue
waits with the same rate, so what it expects is what the executors will do.
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
