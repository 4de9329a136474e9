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
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contracts import OrderIntent
from workers.domain.keys import key_token
from workers.platform.bus import JetStream, LazyBucket

LOCK_TTL_S = 120.0
"""How long a lock lasts if its holder never comes back to release it."""
ATTRIBUTION_TTL_S = 7 * 86400.0
"""As long as the streams keep a route that could be redelivered."""
REMEMBERED_PER_SHAPE = 1000
REMEMBERED_SHAPES = 1000
"""Bounds of what a process remembers of whose orders are whose (the latest are kept)."""
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


@dataclass
class _Gate:
    """Where this process's same-shaped intents queue for their turn to poll the shared lock."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class SameShapeGuard:
    def __init__(self, js: Callable[[], JetStream], locks: str, attributions: str, broker: str) -> None:
        self._store = LazyBucket(js, locks, ttl=LOCK_TTL_S)
        self._owners = LazyBucket(js, attributions, ttl=ATTRIBUTION_TTL_S)
        self._broker = broker
        self._gates: dict[str, _Gate] = {}
        self._known: dict[str, OrderedDict[str, str]] = {}  # shape key -> broker order id -> intent

    async def acquire(self, intent: OrderIntent, wait: float = LOCK_WAIT_S) -> None:
        """Take the shape's shared lock for ``intent`` (again, if it already holds it).

        Within one process, same-shaped intents queue on a local gate and only the first of them
        polls the shared lock: a queue of identical orders then costs one poller per process, not
        one per order (a hundred pollers starved the holder they waited for of the CPU it needed
        to finish). The holder itself never queues at the gate: its redelivery must get through."""
        kv = await self._store()
        key = shape_key(self._broker, intent)
        deadline = time.monotonic() + wait
        if await self._take(kv, key, intent):
            return
        gate = self._gates.setdefault(key, _Gate())
        gate.users += 1
        try:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                    await gate.lock.acquire()
            except TimeoutError:
                raise self._busy(await self._holder(kv, key)) from None
            try:
                await self._poll(kv, key, intent, deadline)
            finally:
                gate.lock.release()
        finally:
            gate.users -= 1
            if not gate.users:
                del self._gates[key]

    async def _poll(self, kv: KeyValue, key: str, intent: OrderIntent, deadline: float) -> None:
        pause, longest = LOCK_POLL_S
        while not await self._take(kv, key, intent):
            if time.monotonic() >= deadline:
                raise self._busy(await self._holder(kv, key))
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, longest)

    async def _take(self, kv: KeyValue, key: str, intent: OrderIntent) -> bool:
        """Create the lock for ``intent``; True if it is now (or already was) the holder."""
        while True:
            try:
                await kv.create(key, intent.intent_id.encode())
                return True
            except KeyNotFoundError:
                # nats-py's create, refused because the key existed, reads it to tell a deleted
                # key from a live one; a lock that expired in between is simply gone.
                continue
            except KeyWrongLastSequenceError:
                holder = await self._holder(kv, key)
                if holder is None:
                    continue  # released in between: try again
                return holder == intent.intent_id

    @staticmethod
    async def _holder(kv: KeyValue, key: str) -> str | None:
        try:
            return ((await kv.get(key)).value or b"").decode()
        except KeyNotFoundError:  # also a deleted key: KeyValue.get raises this for both
            return None

    def _busy(self, holder: str | None) -> ShapeBusy:
        return ShapeBusy(
            f"a same-shaped order ({holder or 'just released'}) at {self._broker} is unresolved; "
            "orders without client ids are told apart one at a time"
        )

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
            entry = await kv.get(f"order.{self._broker}.{key_token(broker_order_id)}")
        except KeyNotFoundError:
            return None
        return (entry.value or b"").decode() or None

    async def attribute(self, broker_order_id: str, intent: OrderIntent) -> bool:
        """Record that the order is ``intent``'s; False if it already belongs to another."""
        kv = await self._owners()
        key = f"order.{self._broker}.{key_token(broker_order_id)}"
        try:
            await kv.create(key, intent.intent_id.encode())
            owner: str | None = intent.intent_id
        except KeyWrongLastSequenceError:
            owner = await self.owner(broker_order_id)
        if owner:
            self._remember(shape_key(self._broker, intent), broker_order_id, owner)
        return owner == intent.intent_id

    def others(self, intent: OrderIntent) -> frozenset[str]:
        """Orders of ``intent``'s shape this process knows belong to other intents: a lookup
        skips them without asking the broker about each one again."""
        owners = self._known.get(shape_key(self._broker, intent))
        if owners is None:
            return frozenset()
        return frozenset(order for order, owner in owners.items() if owner != intent.intent_id)

    def _remember(self, key: str, broker_order_id: str, owner: str) -> None:
        owners = self._known.pop(key, None) or OrderedDict[str, str]()
        self._known[key] = owners  # the most recently used shape last
        owners[broker_order_id] = owner
        while len(owners) > REMEMBERED_PER_SHAPE:
            owners.popitem(last=False)
        while len(self._known) > REMEMBERED_SHAPES:
            del self._known[next(iter(self._known))]
