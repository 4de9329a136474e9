"""Which IB order id each intent's order has, written before the order is sent.

TWS orders carry an order id the client picks (above ``nextValidId``). The id of an intent is
recorded before its order goes out, so a resubmission after a crash sends the same id and the
gateway refuses it as a duplicate (error 103) if it arrived, instead of taking a second order.
``nextValidId`` rolls back after a gateway restart: ids are also kept above the highest one mbx
ever used, so an id never names two orders.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from nats.js.errors import KeyNotFoundError

from workers.domain.keys import key_token
from workers.platform.bus import JetStream, LazyBucket, update_int

HIGH_KEY = "high"


class OrderIds(Protocol):
    async def of_intent(self, intent_id: str) -> int | None: ...

    async def intent_of(self, order_id: int) -> str | None: ...

    async def assign(self, intent_id: str, at_least: int) -> int:
        """A new order id for the intent, above ``at_least`` and every id used before; recorded
        before it is returned."""
        ...


class MemoryOrderIds:
    """In one process only (tests)."""

    def __init__(self) -> None:
        self.by_intent: dict[str, int] = {}
        self.high = 0

    async def of_intent(self, intent_id: str) -> int | None:
        return self.by_intent.get(intent_id)

    async def intent_of(self, order_id: int) -> str | None:
        return next((i for i, o in self.by_intent.items() if o == order_id), None)

    async def assign(self, intent_id: str, at_least: int) -> int:
        self.high = max(at_least, self.high + 1)
        self.by_intent[intent_id] = self.high
        return self.high


class KvOrderIds:
    """In a NATS KV bucket, shared by the executor's replicas and outliving its crashes."""

    def __init__(self, js: Callable[[], JetStream], bucket: str) -> None:
        self._store = LazyBucket(js, bucket)

    async def of_intent(self, intent_id: str) -> int | None:
        kv = await self._store()
        try:
            entry = await kv.get(f"i.{key_token(intent_id)}")
        except KeyNotFoundError:
            return None
        return int(entry.value) if entry.value else None

    async def intent_of(self, order_id: int) -> str | None:
        kv = await self._store()
        try:
            entry = await kv.get(f"o.{order_id}")
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None

    async def assign(self, intent_id: str, at_least: int) -> int:
        kv = await self._store()
        order_id = await update_int(kv, HIGH_KEY, lambda high: max(at_least, high + 1))
        await kv.put(f"o.{order_id}", intent_id.encode())
        await kv.put(f"i.{key_token(intent_id)}", str(order_id).encode())
        return order_id
