"""What each broker already has queued: routes sent to its executors and not yet handled. Pure
apart from the clock, which tests inject.

The router reads the executor consumer's pending count (routes stored and not yet acked: queued,
or in an executor's hands waiting for a rate token) every ``READ_EVERY_S``. Routes decided since
that reading began are added to it, so a burst decided between two readings is seen as it builds
(the router decides hundreds of intents a second; a broker such as Alpaca places three).

The expected wait of a new order at a broker is its queue times what one order costs there: the
rate budget it spends (``seconds_per_order`` of the config), or, where the broker's executors
have lately drained their queue slower than that (measured from the consumer's ack floor between
readings, while a queue waited), that measured time. A reading older than ``STALE_S`` is not
trusted: the queue is then taken as unknown (no wait), rather than as ever growing.
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
DRAIN_WEIGHT = 0.3
"""Weight of the newest interval in the measured drain rate (an average of the last few)."""
SLOWEST_S_PER_ORDER = 10.0
"""The most one order is taken to cost, even by executors that handled nothing for a while."""


class Backlog:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started = clock()
        self._sent: Counter[BrokerName] = Counter()  # routes decided by this router, ever
        self._readings: dict[BrokerName, tuple[float, int, int]] = {}  # at, pending, sent when read
        self._handled: dict[BrokerName, tuple[float, int, int]] = {}  # at, acked so far, pending
        self._drain: dict[BrokerName, float] = {}  # orders a second, measured while queued

    def routed(self, broker: BrokerName) -> None:
        """A route to ``broker`` was just decided."""
        self._sent[broker] += 1

    def begin_reading(self) -> tuple[float, Counter[BrokerName]]:
        """Note the time and the routes decided so far, before asking the consumers."""
        return self._clock(), self._sent.copy()

    def observe(
        self, broker: BrokerName, pending: int, began: tuple[float, Counter[BrokerName]], acked: int | None = None
    ) -> None:
        """``pending``: the broker's executor consumer's routes not yet acked, as read after
        ``begin_reading`` returned ``began``; ``acked``: its ack floor (deliveries acked so far),
        from which the rate its executors actually drain the queue is measured."""
        at, sent = began
        self._readings[broker] = (at, pending, sent[broker])
        if acked is None:
            return
        previous = self._handled.get(broker)
        self._handled[broker] = (at, acked, pending)
        if not pending:
            # The executors caught up: nothing says they are slow any more (a rate measured
            # while they were stalled, by an outage say, must not outlive it).
            self._drain.pop(broker, None)
            return
        if previous is None or at <= previous[0] or not (previous[2] and pending):
            return  # a rate is measured only while a queue waited the whole interval
        rate = max(acked - previous[1], 0) / (at - previous[0])
        known = self._drain.get(broker)
        self._drain[broker] = rate if known is None else known + DRAIN_WEIGHT * (rate - known)

    def seconds_per_order(self, broker: BrokerName) -> float | None:
        """What one order has taken the broker's executors lately while a queue waited (None:
        not measured). Where they are slower than the rate limit allows (CPU, a slow broker),
        this, not the limit, is what a queued order waits for."""
        rate = self._drain.get(broker)
        reading = self._handled.get(broker)
        if rate is None or reading is None or self._clock() - reading[0] > STALE_S:
            return None
        return 1.0 / max(rate, 1.0 / SLOWEST_S_PER_ORDER)

    def drain_snapshot(self) -> dict[BrokerName, float]:
        """Every measured broker's seconds per order."""
        out = {b: self.seconds_per_order(b) for b in self._drain}
        return {b: v for b, v in out.items() if v is not None}

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
