"""What only the IBKR adapter does: order ids recorded before sending and kept above a
rolled-back ``nextValidId``, error 103 as a duplicate, error 1100 taking the broker down, the
connection coming back by itself, and the orders as TWS reads them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from ib_async import Crypto, Stock

from contracts import OrderStatus
from tests.builders import make_intent
from tests.contract.harness import IbkrHarness
from tests.fakes.ibkr import FakeGateway
from workers.domain.venue import VenueAuthFailed, VenueDuplicate, VenueOrder, VenueUnavailable
from workers.venues.ibkr.order_ids import MemoryOrderIds
from workers.venues.ibkr.venue import IbkrVenue, contract_for, order_for


@pytest.fixture
async def h() -> AsyncIterator[IbkrHarness]:
    harness = await IbkrHarness.start()
    try:
        yield harness
    finally:
        await harness.close()


def test_orders_carry_the_intent_and_the_contract_as_ib_names_it() -> None:
    option = make_intent(symbol="AAPL261218C00190000", asset_class="option", quantity="2")
    assert contract_for(option).localSymbol == "AAPL  261218C00190000" and contract_for(option).secType == "OPT"
    assert contract_for(make_intent(symbol="BTC-USD", asset_class="crypto", quantity="1")) == Crypto(
        "BTC", "PAXOS", "USD"
    )
    assert contract_for(make_intent(symbol="AAPL")) == Stock("AAPL", "SMART", "USD")
    intent = make_intent(quantity="5", order_type="limit", limit_price="101.5", time_in_force="gtc")
    order = order_for(intent, 42, intent.intent_id)
    assert (order.orderId, order.orderRef, order.orderType, order.lmtPrice, order.tif) == (
        42, intent.intent_id, "LMT", 101.5, "GTC",
    )  # fmt: skip


async def test_order_ids_stay_above_a_rolled_back_next_valid_id(h: IbkrHarness) -> None:
    first = make_intent(quantity="1")
    placed = await h.venue.place_order(first, first.intent_id)
    h.gateway.restart()  # the gateway's nextValidId starts again from 1
    await asyncio.sleep(0)
    second = make_intent(quantity="1")
    again = await h.venue.place_order(second, second.intent_id)  # reconnects first
    assert int(again.broker_order_id) > int(placed.broker_order_id)
    assert again.status is OrderStatus.FILLED and len(h.gateway.orders) == 2


async def test_a_resubmission_from_a_fresh_connection_is_refused_as_a_duplicate() -> None:
    """A crashed executor's order went out; its successor knows the id from the ledger but not
    the order: the same id goes out again, and the gateway's error 103 says it exists."""
    gateway, ids = FakeGateway(), MemoryOrderIds()
    first = IbkrVenue("127.0.0.1", 4002, 7, ids, timeout_s=2.0, make_ib=gateway.make_ib)
    intent = make_intent(quantity="3", order_type="limit", limit_price="1.00")
    placed = await first.place_order(intent, intent.intent_id)
    await first.disconnect()

    successor = IbkrVenue("127.0.0.1", 4002, 7, ids, timeout_s=2.0, make_ib=gateway.make_ib)
    await successor.connect()
    successor._ib.wrapper.trades.clear()  # as if the start-up synchronisation had missed it
    with pytest.raises(VenueDuplicate, match="error 103"):
        await successor.place_order(intent, intent.intent_id)
    assert gateway.placements == [int(placed.broker_order_id)] * 2 and len(gateway.orders) == 1
    found = await successor.locate(intent, intent.intent_id, placed.submitted_at or intent.created_at)
    assert found is not None and found.broker_order_id == placed.broker_order_id
    await successor.disconnect()


async def test_error_1100_takes_the_broker_down_until_1102(h: IbkrHarness) -> None:
    h.fault(auth_expired=True)
    await asyncio.sleep(0)
    assert not h.venue.is_connected and "error 1100" in h.venue.down_because
    with pytest.raises(VenueAuthFailed):
        await h.venue.get_positions()
    h.fault(auth_expired=False)
    await asyncio.sleep(0)
    assert h.venue.is_connected and h.venue.down_because == ""


async def test_a_dropped_connection_comes_back_by_itself(h: IbkrHarness) -> None:
    h.fault(outage=True)
    await asyncio.sleep(0)
    assert not h.venue.is_connected and "dropped" in h.venue.down_because
    h.fault(outage=False)
    for _ in range(100):
        if h.venue.is_connected:
            break
        await asyncio.sleep(0.05)
    assert h.venue.is_connected  # nobody asked it to: its backoff loop did


async def test_a_paper_configuration_refuses_a_live_login() -> None:
    gateway = FakeGateway()
    import tests.fakes.ibkr as fake

    venue = IbkrVenue("127.0.0.1", 4001, 7, MemoryOrderIds(), timeout_s=2.0, make_ib=gateway.make_ib)
    original, fake.ACCOUNT = fake.ACCOUNT, "U7654321"
    try:
        with pytest.raises(VenueUnavailable, match="logged in to live account"):
            await venue.get_account()
    finally:
        fake.ACCOUNT = original
        await venue.disconnect()
    assert gateway.placements == []


async def test_commissions_come_from_the_commission_reports(h: IbkrHarness) -> None:
    intent = make_intent(quantity="300")
    order = await h.venue.place_order(intent, intent.intent_id)
    assert order.fees == Decimal("1.5")  # 300 x 0.005, as the gateway reported it


def test_paper_ibkr_needs_no_opt_in_and_live_does() -> None:
    from workers.domain.config import parse_config
    from workers.venues.factory import check_config, live_refusal

    paper = parse_config({"brokers": {"ibkr": {"adapter": "ibkr", "gateway": {"port": 7497, "client_id": 3}}}})
    check_config(paper)
    assert live_refusal(paper, allowed=False) is None
    live = parse_config({"brokers": {"ibkr": {"adapter": "ibkr", "paper_trading": False}}})
    assert "ibkr would trade real money" in (live_refusal(live, allowed=False) or "")


async def test_concurrent_lookups_share_the_gateways_answers(h: IbkrHarness) -> None:
    """ib_async files the answers to open- and completed-order requests under one key each: two
    such requests at once would leave one waiting forever. Lookups after a restart come many
    at once (the executor's redeliveries)."""
    intents = [make_intent(quantity=str(n), order_type="limit", limit_price="1.00") for n in (1, 2, 3, 4)]
    placed = [await h.venue.place_order(i, i.intent_id) for i in intents]
    h.venue._ib.wrapper.trades.clear()  # as after a restart: nothing known on this connection
    found = await asyncio.wait_for(asyncio.gather(*(h.venue.locate(i, i.intent_id, i.created_at) for i in intents)), 5)
    assert [f.broker_order_id if f else None for f in found] == [p.broker_order_id for p in placed]


async def test_fills_made_while_tws_was_cut_off_from_ib_are_read_once_it_is_back(h: IbkrHarness) -> None:
    """TWS pushes nothing of what happened at IB during an error 1100, then or after 1102: once
    IB is back the adapter asks for it, and the executor's settling (the connected callback) and
    its reads of the orders (``get_order``, what the reconcile asks) see the fills."""
    resting = [make_intent(quantity="4", order_type="limit", limit_price="1.00") for _ in range(2)]
    placed = [await h.venue.place_order(i, i.intent_id) for i in resting]
    settled, told = [], []

    async def on_order(order: VenueOrder) -> None:
        told.append(order)

    async def on_connect() -> None:
        settled.append(True)

    stream = asyncio.create_task(h.venue.stream_updates(on_order, on_connect))
    try:
        await asyncio.sleep(0.05)
        assert settled == [True]  # connected already
        h.fault(auth_expired=True)  # error 1100
        await asyncio.sleep(0.05)
        h.gateway.trade(int(placed[0].broker_order_id))  # at IB, unseen by TWS
        h.gateway.trade(int(placed[1].broker_order_id), Decimal(2))
        await asyncio.sleep(0.05)
        assert told == []
        h.fault(auth_expired=False)  # error 1102: data maintained, nothing pushed
        for _ in range(40):
            if len(settled) > 1:
                break
            await asyncio.sleep(0.05)
        assert len(settled) == 2, "the executor was not asked to settle its orders after 1102"
        filled = await h.venue.get_order(placed[0].broker_order_id)
        half = await h.venue.get_order(placed[1].broker_order_id)
    finally:
        stream.cancel()
    assert filled is not None and half is not None
    assert (filled.status, filled.filled_quantity, len(filled.fills)) == (OrderStatus.FILLED, 4, 1)
    assert (half.status, half.filled_quantity, len(half.fills)) == (OrderStatus.PARTIALLY_FILLED, 2, 1)
    assert {(o.broker_order_id, o.status) for o in told} >= {
        (placed[0].broker_order_id, OrderStatus.FILLED),
        (placed[1].broker_order_id, OrderStatus.PARTIALLY_FILLED),
    }
