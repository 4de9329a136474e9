"""The order ledger's open-order index: an order that ends leaves no trace in it, so listing
open orders (every executor, every 2 s) reads only orders that are open."""

from __future__ import annotations

import uuid

from nats.aio.client import Client as NatsClient

from contracts import BrokerName, OrderStatus
from tests.builders import make_route
from workers.domain.ledger import LedgerEntry
from workers.platform.bus import read_stream
from workers.platform.order_ledger import OrderLedger


async def test_an_ended_order_leaves_nothing_for_the_open_order_listing_to_read(nc: NatsClient) -> None:
    bucket = f"ledger_{uuid.uuid4().hex[:8]}"
    ledger = OrderLedger(nc.jetstream, bucket)
    routes = [make_route(broker=BrokerName.IBKR) for _ in range(20)]
    working = {}
    for route in routes:
        entry = LedgerEntry.of(route, OrderStatus.ACCEPTED, report_seq=1, broker_order_id=f"b-{route.intent_id}")
        await ledger.put(entry)
        working[route.intent_id] = entry
    assert len(await ledger.open_orders(BrokerName.IBKR)) == 20

    for route in routes[:15]:
        known = working[route.intent_id]
        await ledger.put(known.model_copy(update={"status": OrderStatus.FILLED, "report_seq": 2}), known)
    ended = routes[15]  # written without the entry it replaces (as a report of an unknown outcome is)
    await ledger.put(working[ended.intent_id].model_copy(update={"status": OrderStatus.CANCELLED, "report_seq": 2}))

    still_open = {e.intent_id for e in await ledger.open_orders(BrokerName.IBKR)}
    assert still_open == {r.intent_id for r in routes[16:]}
    stored = await read_stream(nc.jetstream(), f"KV_{bucket}", f"$KV.{bucket}.open.>")
    assert len(stored) == 4  # no delete markers of the 16 that ended
    assert (await ledger.get(ended.intent_id)).status is OrderStatus.CANCELLED  # type: ignore[union-attr]
    await nc.jetstream().delete_key_value(bucket)
