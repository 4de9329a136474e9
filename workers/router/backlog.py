"""What each broker already has queued: routes sent to its executors and not yet handled. Pure
apart from the clock, which tests inject.

The router reads the executor consumer's pending count (routes stored and not yet acked: queued,
or in an executor's hands waiting for a rate token) every ``READ_EVERY_S``. Routes decided since
that reading began are added to it, so a burst decided between two readings is seen as it builds
(the router decides hundreds of intents a second; a broker such as Alpaca places three).

The expected wait of a new order at a broker is its queue times the rate budget one order spends
(``seconds_per_order``). A reading older than ``STALE_S`` is not trusted: the queue is then taken
as unknown (no wait), rather than as ever growing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from contracts import BrokerName

READ_EVERY_S = 0.25
"""Seconds between readings of the executors' consumers."""
STALE_S = 5.0
"""A reading this old says nothing about the queue any more."""


class Backlog:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started = clock()
        self._sent: Counter[BrokerName] = Counter()  # routes decided by this router, ever
        self._readings: dict[BrokerName, tuple[float, int, int]] = {}  # at, pending, sent when read

    def routed(self, broker: BrokerName) -> None:
        """A route to ``broker`` was just decided."""
        self._sent[broker] += 1

    def begin_reading(self) -> tuple[float, Counter[BrokerName]]:
        """Note the time and the routes decided so far, before asking the consumers."""
        return self._clock(), self._sent.copy()

    def observe(self, broker: BrokerName, pending: int, began: tuple[float, Counter[BrokerName]]) -> None:
        """``pending``: the broker's executor consumer's routes not yet acked, as read after
        ``begin_reading`` returned ``began``."""
        at, sent = began
        self._readings[broker] = (at, pending, sent[broker])

    def queued(self, broker: BrokerName) -> int:
        """Routes to ``broker`` not yet handled by its executors: the last reading, plus the
        routes decided since it began (0 when the last reading is stale)."""
        reading = self._readings.get(broker)
        if reading is None:
            # Not read yet (the router has just started): its own routes at least.
            reading = (self._started, 0, 0)
        at, pending, sent = reading
        if self._clock() - at > STALE_S:
            return 0
        return pending + self._sent[broker] - sent

    def snapshot(self) -> dict[BrokerName, int]:
        """Every broker's queue right now (only brokers with something queued)."""
        queues = {b: self.queued(b) for b in self._readings.keys() | self._sent.keys()}
        return {b: n for b, n in queues.items() if n > 0}
