"""Telling same-shaped orders apart at a broker without client order ids (Schwab).

Such a broker can only be asked "which orders of this symbol, side and size exist since then?",
so two intents of the same shape could each take the other's order for their own. Two rules
remove that:

- **One at a time per shape.** An intent holds its shape's lock (a KV key created with
  compare-and-set, whose value is the intent id) from before it looks until its order is
  attributed. A same-shaped intent waits. A lock outlives a crash of its holder, so the
  holder's redelivery (the same intent) takes it again and finds its own order first; locks
  expire after ``LOCK_TTL_S`` in case an intent never comes back.
- **Every order belongs to one intent.** Once an order is known to be an intent's, its broker
  order id is attributed to that intent (created with compare-and-set), and lookups for other
  intents skip it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from contracts import OrderIntent
from workers.platform.bus import LazyBucket

LOCK_TTL_S = 120.0
"""How long a lock lasts if its holder never comes back to release it."""
ATTRIBUTION_TTL_S = 7 * 86400.0
"""As long as the streams keep a route that could be redelivered."""
LOCK_POLL_S = (0.01, 0.1)
"""First and longest pause between looks at a lock held by another intent."""
LOCK_WAIT_S = LOCK_TTL_S + 10.0
"""How long a delivery waits for a same-shaped order ahead of it before retrying later: until
the lock has surely expired, so waiting in a long queue of identical orders, or for a crashed
holder's redelivery, never uses up the deliveries that end in the dead-letter queue."""


class ShapeBusy(Exception):
    """A same-shaped order ahead of this one is still unresolved: retry later (transient)."""


def shape_key(broker: str, intent: OrderIntent) -> str:
    """What a listing can tell apart: symbol, side, size, type and prices."""
    shape = "|".join(
        str(part)
        for part in (
            intent.symbol,
            intent.asset_class,
            intent.side,
            intent.quantity,
            intent.notional,
            intent.order_type,
            intent.limit_price,
            intent.stop_price,
        )
    )
    return f"lock.{broker}.{hashlib.sha256(shape.encode()).hexdigest()[:32]}"


def _token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


class SameShapeGuard:
    def __init__(self, js: Callable[[], JetStreamContext], locks: str, attributions: str, broker: str) -> None:
        self._store = LazyBucket(js, locks, ttl=LOCK_TTL_S)
        self._owners = LazyBucket(js, attributions, ttl=ATTRIBUTION_TTL_S)
        self._broker = broker

    async def acquire(self, intent: OrderIntent, wait: float = LOCK_WAIT_S) -> None:
        """Take the shape's shared lock for ``intent`` (again, if it already holds it)."""
        kv = await self._store()
        key = shape_key(self._broker, intent)
        deadline = time.monotonic() + wait
        pause, longest = LOCK_POLL_S
        while True:
            try:
                await kv.create(key, intent.intent_id.encode())
                return
            except KeyWrongLastSequenceError:
                try:
                    holder = (await kv.get(key)).value or b""
                except KeyNotFoundError:
                    continue  # released in between: try again
                if holder.decode() == intent.intent_id:
                    return
                if time.monotonic() >= deadline:
                    raise ShapeBusy(
                        f"a same-shaped order ({holder.decode()}) at {self._broker} is unresolved; "
                        "orders without client ids are told apart one at a time"
                    ) from None
                await asyncio.sleep(pause)
                pause = min(pause * 1.5, longest)

    async def release(self, intent: OrderIntent) -> None:
        kv = await self._store()
        key = shape_key(self._broker, intent)
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return
        if (entry.value or b"").decode() == intent.intent_id:
            try:
                await kv.delete(key, last=entry.revision)
            except KeyWrongLastSequenceError:
                return

    async def owner(self, broker_order_id: str) -> str | None:
        """The intent an order is attributed to, if any."""
        kv = await self._owners()
        try:
            entry = await kv.get(f"order.{self._broker}.{_token(broker_order_id)}")
        except KeyNotFoundError:
            return None
        return (entry.value or b"").decode() or None

    async def attribute(self, broker_order_id: str, intent_id: str) -> bool:
        """Record that the order is ``intent_id``'s; False if it already belongs to another."""
        kv = await self._owners()
        key = f"order.{self._broker}.{_token(broker_order_id)}"
        try:
            await kv.create(key, intent_id.encode())
        except KeyWrongLastSequenceError:
            return await self.owner(broker_order_id) == intent_id
        return True
