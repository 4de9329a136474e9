"""Where a simulated broker keeps its orders.

A real broker remembers an order after our executor crashes, and every replica of an executor
talks to the same broker. ``KvOrderBook`` gives the simulation the same property: the book lives
in a NATS KV bucket (one per broker), and a client order id is claimed with compare-and-set, so
two replicas submitting the same id see one order. ``MemoryOrderBook`` is for pure unit tests.

A book can also keep the broker's request log (``Request``): every placement that reached the
broker and every lookup it answered, per client order id, in the order they happened, across
processes. Crash tests read it to show that no placement was ever repeated without a lookup
first; ``KvOrderBook`` keeps it only when asked (``request_log=True``), as it costs a write.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, fields, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from contracts import OrderStatus
from workers.domain.venue import VenueFill, VenueOrder
from workers.platform.bus import JetStream, LazyBucket, iter_stream, read_bucket


@dataclass(frozen=True, slots=True)
class Request:
    """One request the broker received for a client order id: ``place`` (logged as it arrives,
    before the order exists) or ``lookup`` (logged once answered; ``found`` says whether it
    found an order)."""

    kind: str
    client_order_id: str
    found: bool = False


def repeated_without_lookup(requests: list[Request]) -> dict[str, int]:
    """Client order ids with a placement that followed an earlier one without a lookup in
    between that found nothing, and how many such placements each has: a blind resubmission
    (or one made although the order was found)."""
    placed: set[str] = set()
    looked: set[str] = set()
    blind: dict[str, int] = {}
    for request in requests:
        cid = request.client_order_id
        if request.kind == "lookup":
            if not request.found:
                looked.add(cid)
            continue
        if cid in placed and cid not in looked:
            blind[cid] = blind.get(cid, 0) + 1
        placed.add(cid)
        looked.discard(cid)
    return blind


class OrderBook(Protocol):
    async def claim(self, client_order_id: str, order: VenueOrder) -> str | None:
        """Create ``order`` under its client order id in one step (as a broker accepts an order
        atomically); returns the existing order's id, and creates nothing, if the id is taken."""
        ...

    async def save(self, order: VenueOrder, *, new: bool = False) -> None:
        """Store ``order`` as it now stands; ``new``: only if the book does not hold it yet (a
        copy from its creation must never overwrite a later version: fills would be lost)."""
        ...

    async def get(self, broker_order_id: str) -> VenueOrder | None: ...

    async def by_client_id(self, client_order_id: str) -> VenueOrder | None: ...

    async def all(self) -> list[VenueOrder]: ...

    def changes(self, after: int) -> AsyncIterator[tuple[int, VenueOrder]]:
        """Every version of every order saved after position ``after`` of the book's own
        sequence, oldest first, with its position: what changed since the last look."""
        ...

    async def saved_since(self, since: datetime) -> list[VenueOrder]:
        """The orders saved at or after ``since``, as they stand: what a broker's "orders
        after" listing returns, without reading the whole book."""
        ...

    async def note(self, request: Request) -> None:
        """Add ``request`` to the broker's request log (a no-op where none is kept)."""
        ...

    async def requests(self) -> list[Request]:
        """The request log, oldest first (empty where none is kept)."""
        ...


class MemoryOrderBook:
    def __init__(self) -> None:
        self._orders: dict[str, VenueOrder] = {}
        self._claims: dict[str, str] = {}
        self._versions: list[VenueOrder] = []  # position k is sequence k + 1
        self._requests: list[Request] = []

    async def note(self, request: Request) -> None:
        self._requests.append(request)

    async def requests(self) -> list[Request]:
        return list(self._requests)

    async def claim(self, client_order_id: str, order: VenueOrder) -> str | None:
        existing = self._claims.get(client_order_id)
        if existing is None:
            self._claims[client_order_id] = order.broker_order_id
            self._orders[order.broker_order_id] = order
        return existing

    async def save(self, order: VenueOrder, *, new: bool = False) -> None:
        known = self._orders.get(order.broker_order_id)
        if new and known is not None and known is not order:  # claim() holds the very object
            return
        self._orders[order.broker_order_id] = order
        self._versions.append(replace(order, fills=list(order.fills)))

    async def get(self, broker_order_id: str) -> VenueOrder | None:
        return self._orders.get(broker_order_id)

    async def changes(self, after: int) -> AsyncIterator[tuple[int, VenueOrder]]:
        for k in range(after, len(self._versions)):
            yield k + 1, self._versions[k]

    async def saved_since(self, since: datetime) -> list[VenueOrder]:
        return [o for o in self._orders.values() if o.submitted_at is not None and o.submitted_at >= since]

    async def by_client_id(self, client_order_id: str) -> VenueOrder | None:
        broker_order_id = self._claims.get(client_order_id)
        return self._orders.get(broker_order_id) if broker_order_id else None

    async def all(self) -> list[VenueOrder]:
        return list(self._orders.values())


def _key(client_order_id: str) -> str:
    # KV keys allow letters, digits and - _ = . / only; intent ids may contain ':'.
    return "c." + base64.urlsafe_b64encode(client_order_id.encode()).decode()


_ORDER_FIELDS = tuple(f.name for f in fields(VenueOrder) if f.name != "fills")
_FILL_FIELDS = tuple(f.name for f in fields(VenueFill))


def encode_order(order: VenueOrder) -> bytes:
    # Field by field rather than dataclasses.asdict, which deep-copies every value.
    data: dict[str, Any] = {name: getattr(order, name) for name in _ORDER_FIELDS}
    data["fills"] = [{name: getattr(fill, name) for name in _FILL_FIELDS} for fill in order.fills]
    return json.dumps(data, default=str).encode()


def decode_order(raw: bytes) -> VenueOrder:
    data: dict[str, Any] = json.loads(raw)
    fills = [
        VenueFill(
            f["fill_id"],
            Decimal(f["quantity"]),
            Decimal(f["price"]),
            Decimal(f["fee"]),
            datetime.fromisoformat(f["executed_at"]),
        )
        for f in data.pop("fills")
    ]
    return VenueOrder(
        broker_order_id=data["broker_order_id"],
        client_order_id=data["client_order_id"],
        status=OrderStatus(data["status"]),
        quantity=Decimal(data["quantity"]),
        symbol=data["symbol"],
        side=data["side"],
        asset_class=data.get("asset_class", ""),
        limit_price=Decimal(data["limit_price"]) if data.get("limit_price") is not None else None,
        submitted_at=datetime.fromisoformat(data["submitted_at"]) if data["submitted_at"] else None,
        filled_quantity=Decimal(data["filled_quantity"]),
        average_price=Decimal(data["average_price"]) if data["average_price"] is not None else None,
        fees=Decimal(data["fees"]),
        fills=fills,
        reason=data["reason"],
    )


BOOK_TTL_S = 8 * 86400
"""A simulated order is forgotten 8 days after its last change: past the streams' 7 days no
route or report that could need it is left."""


class KvOrderBook:
    """The book in the KV bucket ``<prefix>_sim_<broker>``: ``o.<broker order id>`` holds an
    order as it stands, ``c.<client order id, base64>`` the order as it was created under that
    id. The claim is the order's one atomic creation: an order whose later ``o.`` write never
    happened (a crash in between) is still found, as at a real broker. With ``request_log``,
    ``r.<client order id, base64>.<unique>`` records each request; the bucket's stream orders
    them across processes."""

    def __init__(self, js: Callable[[], JetStream], bucket: str, *, request_log: bool = False) -> None:
        self._js = js  # called at first use: the executor connects after it is built
        self._bucket = bucket
        self._store = LazyBucket(js, bucket, ttl=BOOK_TTL_S)
        self._request_log = request_log

    async def note(self, request: Request) -> None:
        if not self._request_log:
            return
        key = "r" + _key(request.client_order_id)[1:] + "." + uuid.uuid4().hex
        value = json.dumps({"kind": request.kind, "client_order_id": request.client_order_id, "found": request.found})
        await (await self._store()).put(key, value.encode())

    async def requests(self) -> list[Request]:
        await self._store()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        return [
            Request(**json.loads(message.data))
            async for message in iter_stream(self._js(), f"KV_{self._bucket}", f"$KV.{self._bucket}.r.>", config)
            if message.data
        ]

    async def claim(self, client_order_id: str, order: VenueOrder) -> str | None:
        kv = await self._store()
        try:
            await kv.create(_key(client_order_id), encode_order(order))
        except KeyWrongLastSequenceError:
            entry = await kv.get(_key(client_order_id))
            return decode_order(entry.value).broker_order_id if entry.value else ""
        return None

    async def save(self, order: VenueOrder, *, new: bool = False) -> None:
        kv = await self._store()
        if not new:
            await kv.put(f"o.{order.broker_order_id}", encode_order(order))
            return
        with contextlib.suppress(KeyWrongLastSequenceError):  # saved meanwhile, maybe traded since
            await kv.create(f"o.{order.broker_order_id}", encode_order(order))

    async def get(self, broker_order_id: str) -> VenueOrder | None:
        try:
            entry = await (await self._store()).get(f"o.{broker_order_id}")
        except KeyNotFoundError:
            return None
        return decode_order(entry.value) if entry.value else None

    async def by_client_id(self, client_order_id: str) -> VenueOrder | None:
        try:
            entry = await (await self._store()).get(_key(client_order_id))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        created = decode_order(entry.value)
        current = await self.get(created.broker_order_id)
        if current is None:
            # Created but never saved (the simulator stopped in between, or is saving it right
            # now): a broker's book has the order whole, so save it now unless it is there.
            await self.save(created, new=True)
            current = await self.get(created.broker_order_id)
        return current or created

    async def changes(self, after: int) -> AsyncIterator[tuple[int, VenueOrder]]:
        """Saved order versions after stream sequence ``after``, a batch at a time."""
        await self._store()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
        async for message in iter_stream(self._js(), f"KV_{self._bucket}", f"$KV.{self._bucket}.o.>", config):
            if message.data:
                yield message.metadata.sequence.stream, decode_order(message.data)

    async def saved_since(self, since: datetime) -> list[VenueOrder]:
        """The latest version of every order whose ``o.`` record was written at or after
        ``since`` (the server's clock), read from that point of the KV stream on."""
        await self._store()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since)
        orders: dict[str, VenueOrder] = {}
        async for message in iter_stream(self._js(), f"KV_{self._bucket}", f"$KV.{self._bucket}.o.>", config):
            if message.data:
                order = decode_order(message.data)
                orders[order.broker_order_id] = order
        return list(orders.values())

    async def all(self) -> list[VenueOrder]:
        """Every order, read in one pass (``read_bucket``: not a KV watch, which can miss some)."""
        await self._store()
        orders = {
            o.broker_order_id: o
            for _, v in await read_bucket(self._js(), self._bucket, "c.>")
            for o in [decode_order(v)]
        }
        orders |= {
            o.broker_order_id: o
            for _, v in await read_bucket(self._js(), self._bucket, "o.>")
            for o in [decode_order(v)]
        }
        return list(orders.values())
