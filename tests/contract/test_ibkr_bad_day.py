"""The fake gateway's bad day, as IB documents it (tests/chaos/test_bad_day.py relies on it), met
by the IBKR adapter: TWS's pacing of 50 messages a second (error 100 past it, which ib_async's
own throttle keeps a client under), an order dropped with its connection before the gateway read
it, answers that come late, ``PreSubmitted`` before ``Submitted``, and the close of a trading
day (no ``done_for_day`` at IB: DAY orders cancelled, GTC ones held until the next open)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
from ib_async.ib import StartupFetch

from contracts import OrderStatus
from tests.builders import make_intent
from tests.contract.harness import IbkrHarness
from tests.fakes.ibkr import FakeGateway, MessageRate
from tests.fakes.ibkr_bridge import BRIDGE_ENV, bridged_ib, serve_gateway_thread
from workers.domain.venue import VenueAmbiguous
from workers.venues.ibkr.order_ids import MemoryOrderIds
from workers.venues.ibkr.venue import IbkrVenue


@pytest.fixture
async def h() -> AsyncIterator[IbkrHarness]:
    harness = await IbkrHarness.start()
    try:
        yield harness
    finally:
        await harness.close()


def resting(**fields: str) -> dict[str, str]:
    return {"quantity": "4", "order_type": "limit", "limit_price": "1.00"} | fields


def test_a_rolling_second_admits_fifty_messages_and_counts_the_rest() -> None:
    rate = MessageRate(50)
    assert all(rate.admit(10.0 + n / 100) for n in range(50))  # 50 within half a second
    assert not rate.admit(10.6)  # a refused message still reached TWS: it counts
    assert rate.admit(11.55)  # the first 50 are over a second old: room again
    assert (rate.refused, rate.peak, rate.messages) == (1, 51, 52)


async def test_a_client_past_fifty_messages_a_second_gets_error_100_and_the_message_is_dropped() -> None:
    """The in-process client has no throttle: its 51st message in a second is refused, as TWS
    refuses it, and counted as a refusal the client caused."""
    gateway = FakeGateway(message_limit=50)
    ib = gateway.make_ib()
    await ib.connectAsync("127.0.0.1", 4002, clientId=7, fetchFields=StartupFetch(0))
    errors: list[int] = []
    ib.errorEvent += lambda req_id, code, text, contract: errors.append(code)
    for _ in range(60):
        ib.client.reqIds(1)
    await asyncio.sleep(0.05)
    stats = gateway.rate_stats()
    assert (stats["refused"], stats["peak"]) == (12, 62)  # with the handshake and the positions request
    assert errors == [100] * 12
    ib.disconnect()


async def test_the_adapters_pacing_stays_under_fifty_a_second_though_the_gateway_reads_late() -> None:
    """Across the bridge, requests leave through ib_async's throttle as the adapter sets it, and
    TWS counts them as they arrive. A gateway slow to read the first of 150 (0.15 s) must still
    see no 50 in any second: a throttle that sends a second's worth at once (45 at each second's
    start) lands two of them within one second at the gateway."""
    gateway = FakeGateway(message_limit=50)
    with serve_gateway_thread(gateway) as (address, lock):
        os.environ[BRIDGE_ENV] = address
        try:
            venue = IbkrVenue("127.0.0.1", 4002, 7, MemoryOrderIds(), timeout_s=2.0, make_ib=bridged_ib)
            await venue.connect()
            with lock:  # the gateway reads nothing meanwhile
                for _ in range(150):
                    venue._ib.client.reqIds(1)
                await asyncio.sleep(0.15)
            for _ in range(100):
                with lock:
                    if gateway.rate_stats()["messages"] >= 150:
                        break
                await asyncio.sleep(0.1)
            await venue.disconnect()
        finally:
            del os.environ[BRIDGE_ENV]
    stats = gateway.rate_stats()
    assert stats["messages"] >= 150 and stats["refused"] == 0 and stats["peak"] <= 50, stats


async def test_an_order_lost_with_its_connection_before_the_gateway_read_it_is_not_there(h: IbkrHarness) -> None:
    """The connection drops as the order arrives: the client cannot tell, nothing was placed, and
    the same order id placed again is taken (not refused as a duplicate)."""
    intent = make_intent(quantity="3")
    h.fault(server_errors_next=1)
    with pytest.raises(VenueAmbiguous, match="dropped"):
        await h.venue.place_order(intent, intent.intent_id)
    assert h.gateway.orders == {}
    assert await h.venue.locate(intent, intent.intent_id, intent.created_at) is None  # reconnects first
    placed = await h.venue.place_order(intent, intent.intent_id)
    assert placed.status is OrderStatus.FILLED and len(h.gateway.orders) == 1


async def test_late_answers_leave_the_order_unknown_until_they_come(h: IbkrHarness) -> None:
    h.fault(slow_replies=1, slow_reply_s=2.5)  # past the adapter's 2 s
    intent = make_intent(quantity="3")
    with pytest.raises(VenueAmbiguous, match="no answer"):
        await h.venue.place_order(intent, intent.intent_id)
    [placed] = h.gateway.orders.values()
    assert placed.status == "Filled"  # done at the gateway at once
    await asyncio.sleep(0.6)
    found = await h.venue.locate(intent, intent.intent_id, intent.created_at)
    assert found is not None and found.status is OrderStatus.FILLED and len(found.fills) == 1


async def test_pre_submitted_is_accepted_then_works(h: IbkrHarness) -> None:
    h.fault(pending_new_next=1, pending_new_s=0.2)
    intent = make_intent(**resting())
    order = await h.venue.place_order(intent, intent.intent_id)
    [placed] = h.gateway.orders.values()
    assert (order.status, placed.status) == (OrderStatus.ACCEPTED, "PreSubmitted")
    await asyncio.sleep(0.3)
    assert placed.status == "Submitted"
    assert h.venue._trade_by_ref(intent.intent_id).orderStatus.status == "Submitted"  # told


async def test_at_the_close_day_orders_are_cancelled_and_gtc_ones_held_until_the_next_open(h: IbkrHarness) -> None:
    day, gtc = make_intent(**resting()), make_intent(**resting(time_in_force="gtc"))
    placed = {i.intent_id: await h.venue.place_order(i, i.intent_id) for i in (day, gtc)}
    h.gateway.end_day()
    await asyncio.sleep(0.05)
    ended = await h.venue.get_order(placed[day.intent_id].broker_order_id)
    held = await h.venue.get_order(placed[gtc.intent_id].broker_order_id)
    assert ended is not None and ended.status is OrderStatus.CANCELLED
    assert held is not None and held.status is OrderStatus.ACCEPTED  # PreSubmitted: still working
    h.gateway.next_day()
    await h.trade(placed[gtc.intent_id])
    await asyncio.sleep(0.05)
    filled = await h.venue.get_order(placed[gtc.intent_id].broker_order_id)
    assert filled is not None and filled.status is OrderStatus.FILLED and filled.filled_quantity == 4
