"""What each broker already has queued: routes sent to its executors and not yet handled. Pure
apart from the clock, which tests inject.

The router reads the executor consumer's pending count (routes stored and not yet acked: queued,
or in an executor's hands waiting for a rate token) every ``READ_EVERY_S``, after reading the
routes stream's last sequence number. A route the stream stored at or below that number is in
the reading; every other route this router decided is added to it: those decided since, those
still on their way (a route is journaled, then published: under a burst it reaches the stream
well after it was decided) and those stored after that number. So a burst decided between two
readings is seen as it builds (the router decides hundreds of intents a second; a broker such
as Alpaca places three), and no route is counted twice: which routes a reading holds is told by
their sequence numbers, not by when their acknowledgements reached a router busy deciding (a
count taken when the reading began missed the acknowledgements still queued, and counted their
routes twice: Alpaca's queue read 54 where 39 waited, and a rebalance sent three fractional
orders too many to Robinhood, 6.6 s of its budget).

The expected wait of a new order at a broker is its queue times what one order costs there: the
rate budget it spends (``seconds_per_order`` of the config), or, where the broker's executors
have lately drained their queue slower than that (measured from the consumer's ack floor over the
last few seconds of readings, while a queue waited), that measured time; until it is measured,
at least ``UNMEASURED_S_PER_ORDER``. A reading older than ``STALE_S`` is not trusted: the queue
is then taken as unknown (no wait), rather than as ever growing.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable

from contracts import BrokerName

READ_EVERY_S = 0.25
"""Seconds between readings of the executors' consumers."""
STALE_S = 5.0
"""A reading this old says nothing about the queue any more."""
DRAIN_SPAN_S = 5.0
"""Seconds of readings the executors' drain rate is measured over."""
MIN_SPAN_S = 0.5
"""The least time a drain rate is measured over (two readings)."""
UNMEASURED_S_PER_ORDER = 0.02
"""What one order is taken to cost a broker whose drain is not measured yet, where its rate
limit allows more. Below what every documented limit costs (IBKR's 45 a second: 0.025 s), so
it changes nothing where a limit binds; with limits raised, it keeps a burst's first half second
from piling hundreds of orders onto a broker whose executors turn out to place forty a second
(Schwab's: a request to list orders before each placement, one order of a shape at a time)
while the router decides a thousand: 100 queued are the 2 s ``routing.max_queue_wait_s``."""
SLOWEST_S_PER_ORDER = 10.0
"""The most one order is taken to cost, even by executors that handled nothing for a while."""


class Backlog:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started = clock()
        self._sent: Counter[BrokerName] = Counter()  # routes decided by this router, ever
        self._held: Counter[BrokerName] = Counter()  # of those, the ones the last reading holds
        self._unread: dict[BrokerName, list[int]] = {}  # stored past the last reading: sequences
        self._readings: dict[BrokerName, tuple[float, int, int]] = {}  # at, pending, stream's last seq
        self._acks: dict[BrokerName, deque[tuple[float, int]]] = {}  # (at, ack floor) while queued

    def routed(self, broker: BrokerName) -> None:
        """A route to ``broker`` was just decided."""
        self._sent[broker] += 1

    def stored(self, broker: BrokerName, seq: int) -> None:
        """A route counted by ``routed`` is in the stream now, at sequence ``seq``."""
        reading = self._readings.get(broker)
        if reading is not None and seq <= reading[2]:
            self._held[broker] += 1  # stored before the last reading: it holds this route
        else:
            self._unread.setdefault(broker, []).append(seq)

    def abandoned(self, broker: BrokerName) -> None:
        """A route counted by ``routed`` was not published after all (its handler failed; the
        intent is decided again on redelivery and counted then)."""
        self._sent[broker] -= 1

    def begin_reading(self, last_seq: int) -> tuple[float, int]:
        """Note the time and the routes stream's last sequence, read before asking the
        consumers: their readings hold every route stored up to it."""
        return self._clock(), last_seq

    def observe(self, broker: BrokerName, pending: int, began: tuple[float, int], acked: int | None = None) -> None:
        """``pending``: the broker's executor consumer's routes not yet acked, as read after
        ``begin_reading`` returned ``began``; ``acked``: its ack floor (deliveries acked so far),
        from which the rate its executors actually drain the queue is measured."""
        at, last_seq = began
        self._readings[broker] = (at, pending, last_seq)
        unread = self._unread.get(broker, [])
        if unread:
            self._unread[broker] = [seq for seq in unread if seq > last_seq]
            self._held[broker] += len(unread) - len(self._unread[broker])
        if acked is None:
            return
        window = self._acks.setdefault(broker, deque())
        if not pending:
            # The executors caught up: nothing says they are slow any more (a rate measured
            # while they were stalled, by an outage say, must not outlive it).
            window.clear()
            return
        window.append((at, acked))
        while len(window) > 2 and at - window[1][0] >= DRAIN_SPAN_S:
            window.popleft()

    def seconds_per_order(self, broker: BrokerName) -> float | None:
        """What one order has taken the broker's executors lately while a queue waited (None:
        not measured). Where they are slower than the rate limit allows (CPU, a slow broker),
        this, not the limit, is what a queued order waits for.

        Measured over the readings of the last ``DRAIN_SPAN_S`` (at least ``MIN_SPAN_S``), one
        order more than were acked: a broker allowed an order every two seconds acks none in
        most quarter-second intervals, and is not slow for that."""
        window = self._acks.get(broker)
        if not window or self._clock() - window[-1][0] > STALE_S:
            return None
        (first_at, first_acked), (last_at, last_acked) = window[0], window[-1]
        span = last_at - first_at
        if span < MIN_SPAN_S:
            return None
        rate = (max(last_acked - first_acked, 0) + 1) / span
        return 1.0 / max(rate, 1.0 / SLOWEST_S_PER_ORDER)

    def drain_snapshot(self) -> dict[BrokerName, float]:
        """Every measured broker's seconds per order."""
        out = {b: self.seconds_per_order(b) for b in self._acks}
        return {b: v for b, v in out.items() if v is not None}

    def queued(self, broker: BrokerName) -> int:
        """Routes to ``broker`` not yet handled by its executors: the last reading, plus this
        router's routes it does not hold (0 when the last reading is stale)."""
        reading = self._readings.get(broker)
        if reading is None:
            # Not read yet (the router has just started): its own routes at least.
            reading = (self._started, 0, 0)
        at, pending, _ = reading
        if self._clock() - at > STALE_S:
            return 0
        return pending + self._sent[broker] - self._held[broker]

    def snapshot(self) -> dict[BrokerName, int]:
        """Every broker's queue right now (only brokers with something queued)."""
        queues = {b: self.queued(b) for b in self._readings.keys() | self._sent.keys()}
        return {b: n for b, n in queues.items() if n > 0}
