"""A bad day on a timeline: steps that switch a fake broker's faults (or work its market) at
given seconds from the start, each under the lock the fake's server holds, so a step never
lands in the middle of a request. What ran when is kept, for the test's failure messages."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Step:
    at_s: float
    name: str
    action: Callable[[], object]
    """Runs under the fake's lock; may return an awaitable to await after it (e.g. a stream
    drop, or publishing intents), outside the lock."""


@dataclass
class Timeline:
    steps: list[Step]
    lock: threading.Lock
    ran: list[tuple[float, str]] = field(default_factory=list)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for step in sorted(self.steps, key=lambda s: s.at_s):
            await asyncio.sleep(max(start + step.at_s - loop.time(), 0))
            with self.lock:
                result = step.action()
            if isinstance(result, Awaitable):
                await result
            self.ran.append((round(loop.time() - start, 1), step.name))
