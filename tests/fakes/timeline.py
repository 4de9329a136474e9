"""A bad day on a timeline: steps that switch a fake broker's faults (or work its market) at
given seconds from the start, each under the lock the fake's server holds, so a step never
lands in the middle of a request. A step's follow-up (an awaitable it returns: publishing
intents, waiting for orders to reach the broker) runs beside the later steps, so each step
keeps its time. What ran when is kept, for the test's failure messages."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Step:
    at_s: float
    name: str
    action: Callable[[], object]
    """Runs under the fake's lock; may return an awaitable to run after it, outside the lock."""


@dataclass
class Timeline:
    steps: list[Step]
    lock: threading.Lock
    ran: list[tuple[float, str]] = field(default_factory=list)

    async def run(self) -> None:
        """Every step at its time; returns once every follow-up has finished too."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        follow_ups: list[asyncio.Task[Any]] = []
        for step in sorted(self.steps, key=lambda s: s.at_s):
            await asyncio.sleep(max(start + step.at_s - loop.time(), 0))
            with self.lock:
                result = step.action()
            if isinstance(result, Awaitable):
                follow_ups.append(asyncio.ensure_future(result))
            self.ran.append((round(loop.time() - start, 1), step.name))
        await asyncio.gather(*follow_ups)
