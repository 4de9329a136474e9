"""Where each intent's order is: the executors' shared record, kept in a NATS KV bucket.

Three readers need it: the router, to send a cancel to the broker holding the order; an
executor starting up, to settle the orders its broker left working (reconciliation); and an
executor handling a redelivered route, to know whether the earlier deliveries provably never
reached the broker (``unsent_delivery``), in which case it may fail over without a lookup.

Keys (intent ids may hold characters KV keys do not allow, so they are base64-encoded):
- ``i.<id>``: an ``LedgerEntry``, rewritten at every change;
- ``open.<broker>.<id>``: the same entry while the order is working at that broker, purged
  (no delete marker left) when it ends, so an executor lists its open orders without reading
  every order.
Entries expire with the streams (7 days).
"""

from __future__ import annotations

from collections.abc import Callable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from contracts import BrokerName
from workers.domain.keys import key_token
from workers.domain.ledger import LedgerEntry
from workers.platform.bus import JetStream, LazyBucket, read_bucket

TTL_SECONDS = 7 * 86400


class OrderLedger:
    def __init__(self, js: Callable[[], JetStream], bucket: str) -> None:
        self._js = js  # called at first use: the worker connects after it is built
        self._bucket = bucket
        self._store = LazyBucket(js, bucket, ttl=TTL_SECONDS)

    async def get(self, intent_id: str) -> LedgerEntry | None:
        entry, _ = await self.get_versioned(intent_id)
        return entry

    async def get_versioned(self, intent_id: str) -> tuple[LedgerEntry | None, int]:
        """The entry and its KV revision (0 when there is none), for a compare-and-set ``put``."""
        try:
            stored = await (await self._store()).get(f"i.{key_token(intent_id)}")
        except KeyNotFoundError:
            return None, 0
        entry = LedgerEntry.model_validate_json(stored.value) if stored.value else None
        return entry, int(stored.revision or 0)

    async def put(self, entry: LedgerEntry, previous: LedgerEntry | None = None, *, revision: int | None = None) -> int:
        """Record ``entry``; keep its open-order key in step with whether it still works.

        With ``revision`` the write is a compare-and-set: it happens only if the entry is still
        at that revision (0: still absent), else nothing is written and 0 is returned, so two
        writers of one order never overwrite each other's state unseen. Returns the entry's new
        revision."""
        kv = await self._store()
        token = key_token(entry.intent_id)
        if not entry.working:
            entry = entry.model_copy(update={"decision": None})
        value = entry.model_dump_json().encode()
        try:
            if revision is None:
                written = await kv.put(f"i.{token}", value)
            elif revision:
                written = await kv.update(f"i.{token}", value, last=revision)
            else:
                written = await kv.create(f"i.{token}", value)
        except KeyWrongLastSequenceError:
            return 0
        if entry.working:
            await kv.put(f"open.{entry.broker}.{token}", value)
        elif previous is not None and previous.working:
            await self._forget_open(previous.broker, token)
        elif previous is None and entry.broker_order_id and revision != 0:
            # It may have been working: make sure. Not after a create-only write (revision 0)
            # that succeeded: the entry did not exist, and an open-order key is only written
            # after its entry (a key left behind would be read, and purged, by the next listing).
            await self._forget_open(entry.broker, token)
        return int(written)

    async def _forget_open(self, broker: BrokerName, token: str) -> None:
        """Remove an open-order key without a trace. A KV delete would leave a marker that every
        listing of open orders reads again (every executor lists its broker's every 2 s): after
        a burst of 5,000 orders, 5,000 markers a pass, for the markers' 7 days."""
        await self._js().purge_stream(f"KV_{self._bucket}", subject=f"$KV.{self._bucket}.open.{broker}.{token}")

    async def open_orders(self, broker: BrokerName) -> list[LedgerEntry]:
        await self._store()
        entries = await read_bucket(self._js(), self._bucket, f"open.{broker}.>")
        return [LedgerEntry.model_validate_json(value) for _, value in entries]
