"""The venue contract: what the executor relies on from every adapter, real or simulated.

Each check is a plain coroutine over a harness, so the suite runs it for every venue and
``test_a_broken_adapter_fails`` can run it on a deliberately wrong one.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from contracts import OrderStatus
from tests.builders import make_intent
from tests.contract.harness import UNKNOWN_SYMBOL, Harness, StreamingHarness
from workers.domain.venue import (
    VenueAmbiguous,
    VenueAuthFailed,
    VenueDuplicate,
    VenueOrder,
    VenueRateLimited,
    VenueRejected,
    VenueUnavailable,
)

SINCE = timedelta(seconds=5)


def since() -> datetime:
    return datetime.now(UTC) - SINCE


async def market_order_fills_and_is_found_by_client_id(h: Harness) -> None:
    intent = make_intent(**h.kind, quantity="3")
    order = await h.venue.place_order(intent, intent.intent_id)
    if h.venue.capabilities.has_client_order_id:
        assert order.client_order_id == intent.intent_id
    assert order.status is OrderStatus.FILLED and order.filled_quantity == 3
    assert sum(f.quantity for f in order.fills) == 3
    found = await h.venue.locate(intent, intent.intent_id, since())
    assert found is not None and found.broker_order_id == order.broker_order_id
    assert [f.fill_id for f in found.fills] == [f.fill_id for f in order.fills]


async def a_repeated_client_id_never_makes_a_second_order(h: Harness) -> None:
    """Where the broker has client order ids. Where it has none (Schwab), the same order sent
    twice is two orders, which the adapter must not hide: the executor looks before placing,
    and a lookup skips the orders already known to be other intents'."""
    intent = make_intent(**h.kind, quantity="2")
    first = await h.venue.place_order(intent, intent.intent_id)
    if not h.venue.capabilities.has_client_order_id:
        second = await h.venue.place_order(intent, intent.intent_id)
        assert second.broker_order_id != first.broker_order_id
        found = await h.venue.locate(intent, intent.intent_id, since())
        assert found is not None and found.broker_order_id == first.broker_order_id  # the earliest
        other = await h.venue.locate(intent, intent.intent_id, since(), frozenset({first.broker_order_id}))
        assert other is not None and other.broker_order_id == second.broker_order_id
        both = frozenset({first.broker_order_id, second.broker_order_id})
        assert await h.venue.locate(intent, intent.intent_id, since(), both) is None
        bigger = make_intent(**h.kind, quantity="20")  # another shape: not this intent's
        assert await h.venue.locate(bigger, bigger.intent_id, since()) is None
        return
    try:
        again = await h.venue.place_order(intent, intent.intent_id)
    except VenueDuplicate:
        again = None
    if again is not None:  # brokers that answer with the original order
        assert again.broker_order_id == first.broker_order_id
    found = await h.venue.locate(intent, intent.intent_id, since())
    assert found is not None and found.broker_order_id == first.broker_order_id


async def a_lost_reply_is_ambiguous_and_the_order_is_found(h: Harness) -> None:
    intent = make_intent(**h.kind, quantity="4")
    h.fault(timeouts_after_accept=1)
    with pytest.raises(VenueAmbiguous):
        await h.venue.place_order(intent, intent.intent_id)
    found = await h.venue.locate(intent, intent.intent_id, since())
    assert found is not None and found.filled_quantity == 4
    if not h.venue.capabilities.has_client_order_id:
        return  # a second placement would be a second order: the executor never sends one after this
    with pytest.raises(VenueDuplicate):  # or the original back: never a second order
        again = await h.venue.place_order(intent, intent.intent_id)
        assert again.broker_order_id == found.broker_order_id
        raise VenueDuplicate("the original was returned")


async def a_resting_order_fills_in_parts(h: Harness) -> None:
    intent = make_intent(**h.kind, quantity="10", order_type="limit", limit_price="1.00")
    order = await h.venue.place_order(intent, intent.intent_id)
    assert order.status is OrderStatus.ACCEPTED and order.fills == []
    await h.trade(order, Decimal(4))
    partial = await h.venue.get_order(order.broker_order_id)
    assert partial is not None and partial.status is OrderStatus.PARTIALLY_FILLED
    assert [f.quantity for f in partial.fills] == [4]
    await h.trade(order)
    done = await h.venue.get_order(order.broker_order_id)
    assert done is not None and done.status is OrderStatus.FILLED and done.filled_quantity == 10
    assert [f.quantity for f in done.fills] == [4, 6]
    assert done.fills[0].fill_id == partial.fills[0].fill_id  # executions keep their ids
    assert len({f.fill_id for f in done.fills}) == 2


async def a_working_order_cancels_and_an_ended_one_is_too_late(h: Harness) -> None:
    intent = make_intent(**h.kind, quantity="5", order_type="limit", limit_price="1.00")
    order = await h.venue.place_order(intent, intent.intent_id)
    cancelled = await h.venue.cancel_order(order.broker_order_id)
    assert cancelled.status is OrderStatus.CANCELLED
    with pytest.raises(VenueRejected) as too_late:
        await h.venue.cancel_order(order.broker_order_id)
    assert too_late.value.reason_code == "too_late_to_cancel"
    with pytest.raises(VenueRejected) as unknown:
        await h.venue.cancel_order("00000000-0000-0000-0000-000000000000")
    assert unknown.value.reason_code == "unknown_order"
    assert await h.venue.get_order("00000000-0000-0000-0000-000000000000") is None


async def rejections_say_whether_another_broker_may_take_it(h: Harness) -> None:
    h.fault(reject_next=1)
    intent = make_intent(**h.kind, quantity="1")
    with pytest.raises(VenueRejected) as no_money:
        await h.venue.place_order(intent, intent.intent_id)
    assert not no_money.value.order_specific
    unknown = make_intent(**(h.kind | {"symbol": UNKNOWN_SYMBOL}), quantity="1")
    with pytest.raises(VenueRejected) as bad:
        await h.venue.place_order(unknown, unknown.intent_id)
    assert bad.value.order_specific


async def a_429_names_when_to_come_back(h: Harness) -> None:
    h.fault(rate_limited_next=1)
    intent = make_intent(**h.kind, quantity="1")
    with pytest.raises(VenueRateLimited) as limited:
        await h.venue.place_order(intent, intent.intent_id)
    assert 0 < limited.value.retry_after <= 60
    assert await h.venue.locate(intent, intent.intent_id, since()) is None  # nothing was placed
    assert (await h.venue.place_order(intent, intent.intent_id)).status is OrderStatus.FILLED


async def an_outage_never_reaches_the_broker(h: Harness) -> None:
    intent = make_intent(**h.kind, quantity="1")
    h.fault(outage=True)
    with pytest.raises(VenueUnavailable) as down:
        await h.venue.place_order(intent, intent.intent_id)
    assert not isinstance(down.value, VenueRateLimited | VenueAuthFailed)
    assert not h.venue.is_connected
    h.fault(outage=False)
    # The executor asks a down broker nothing but its look (connect): that alone brings it up.
    await h.venue.connect()
    assert h.venue.is_connected
    assert await h.venue.locate(intent, intent.intent_id, since()) is None
    assert (await h.venue.place_order(intent, intent.intent_id)).status is OrderStatus.FILLED
    assert h.venue.is_connected


async def expired_credentials_take_the_broker_down(h: Harness) -> None:
    h.fault(auth_expired=True)
    intent = make_intent(**h.kind, quantity="1")
    with pytest.raises(VenueAuthFailed):
        await h.venue.place_order(intent, intent.intent_id)
    with pytest.raises(VenueAuthFailed):
        await h.venue.get_account()
    assert not h.venue.is_connected
    h.fault(auth_expired=False)
    await h.venue.connect()  # the executor's look at a down broker, and nothing else
    assert h.venue.is_connected
    await h.venue.get_account()


async def account_and_positions_follow_the_fills(h: Harness) -> None:
    before = await h.venue.get_account()
    intent = make_intent(**h.kind, quantity="7")
    order = await h.venue.place_order(intent, intent.intent_id)
    after = await h.venue.get_account()
    assert after.cash < before.cash
    [line] = [p for p in await h.venue.get_positions() if p.symbol == h.kind["symbol"]]
    assert line.quantity == 7 and line.market_value > 0
    assert line.average_cost == (order.average_price if h.average_cost_known else 0)


CHECKS = [
    market_order_fills_and_is_found_by_client_id,
    a_repeated_client_id_never_makes_a_second_order,
    a_lost_reply_is_ambiguous_and_the_order_is_found,
    a_resting_order_fills_in_parts,
    a_working_order_cancels_and_an_ended_one_is_too_late,
    rejections_say_whether_another_broker_may_take_it,
    a_429_names_when_to_come_back,
    an_outage_never_reaches_the_broker,
    expired_credentials_take_the_broker_down,
    account_and_positions_follow_the_fills,
]


async def the_stream_reports_changes_and_comes_back_after_a_drop(h: StreamingHarness) -> None:
    """Changes arrive as whole orders (fills complete); after the stream drops it reconnects by
    itself and says so, for the caller to settle over REST what changed meanwhile."""
    updates: asyncio.Queue[VenueOrder] = asyncio.Queue()
    connects = asyncio.Queue[None]()

    async def on_order(order: VenueOrder) -> None:
        await updates.put(order)

    async def on_connect() -> None:
        await connects.put(None)

    async def next_update(broker_order_id: str, status: OrderStatus) -> VenueOrder:
        while True:
            order = await asyncio.wait_for(updates.get(), 10)
            if order.broker_order_id == broker_order_id and order.status is status:
                return order

    follow = asyncio.create_task(h.venue.stream_updates(on_order, on_connect))
    try:
        await asyncio.wait_for(connects.get(), 10)
        intent = make_intent(**h.kind, quantity="10", order_type="limit", limit_price="1.00")
        order = await h.venue.place_order(intent, intent.intent_id)
        await h.trade(order, Decimal(4))
        partial = await next_update(order.broker_order_id, OrderStatus.PARTIALLY_FILLED)
        assert [f.quantity for f in partial.fills] == [4]

        await h.drop_stream()
        await h.trade(order)  # fills while the stream may be away
        await asyncio.wait_for(connects.get(), 10)  # back, and says so
        settled = await h.venue.get_order(order.broker_order_id)
        assert settled is not None and settled.status is OrderStatus.FILLED
        assert [f.quantity for f in settled.fills] == [4, 6]

        other = make_intent(**h.kind, quantity="3", order_type="limit", limit_price="1.00")
        working = await h.venue.place_order(other, other.intent_id)
        await h.venue.cancel_order(working.broker_order_id)
        await next_update(working.broker_order_id, OrderStatus.CANCELLED)  # the new connection carries on
    finally:
        follow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follow


STREAM_CHECKS = [the_stream_reports_changes_and_comes_back_after_a_drop]


async def a_large_market_order_fills_in_lots(h: Harness) -> None:
    """Several executions of one order, each kept with its own id."""
    h.fault(lot_size="2")
    intent = make_intent(**h.kind, quantity="5")
    order = await h.venue.place_order(intent, intent.intent_id)
    h.fault(lot_size=None)
    assert order.status is OrderStatus.FILLED and [f.quantity for f in order.fills] == [2, 2, 1]
    assert len({f.fill_id for f in order.fills}) == 3


CHECKS.append(a_large_market_order_fills_in_lots)
