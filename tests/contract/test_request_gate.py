"""Every request a real adapter sends counts against the rate budget it is handed: the adapter
awaits the gate before each one, its own reads included (Alpaca's fill activities after a
placement or a look-up, the order read after a cancel, snapshots), and tells the gate of a 429."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.builders import make_intent
from tests.conftest import eventually
from tests.contract.harness import AlpacaHarness, CoinbaseHarness, IbkrHarness, RobinhoodHarness, SchwabHarness
from workers.domain.venue import VenueRateLimited
from workers.venues.alpaca.venue import AlpacaVenue
from workers.venues.ibkr.venue import PACING_PAUSE_S


class CountingGate:
    """A gate that lets every request go and remembers what it was asked."""

    def __init__(self) -> None:
        self.taken = 0
        self.refusals: list[float] = []

    async def take(self) -> None:
        self.taken += 1

    async def refused(self, retry_after: float) -> None:
        self.refusals.append(retry_after)


HARNESSES: dict[str, Any] = {
    "alpaca": AlpacaHarness.start,
    "coinbase": CoinbaseHarness.start,
    "robinhood": RobinhoodHarness.start,
    "schwab": SchwabHarness.start,
}


@pytest.mark.parametrize("name", sorted(HARNESSES))
async def test_every_request_an_adapter_sends_takes_a_token_its_own_reads_included(name: str) -> None:
    """Placing, looking up, reading, cancelling and a snapshot take exactly one token per
    request that reaches the broker, however many requests each call makes."""
    harness = await HARNESSES[name]()
    try:
        gate = CountingGate()
        harness.venue.use_gate(gate)
        harness.fake.requests.clear()
        since = datetime.now(UTC) - timedelta(minutes=1)
        filled = make_intent(**harness.kind)
        resting = make_intent(**harness.kind, order_type="limit", limit_price=Decimal(1))
        calls = 0
        for intent in (filled, resting):
            placed = await harness.venue.place_order(intent, intent.intent_id)
            await harness.venue.locate(intent, intent.intent_id, since)
            await harness.venue.get_order(placed.broker_order_id)
            calls += 3
        await harness.venue.cancel_order(placed.broker_order_id)
        await harness.venue.get_account()
        await harness.venue.get_positions()
        calls += 3

        assert gate.taken == len(harness.fake.requests)
        assert gate.taken >= calls
        assert gate.refusals == []
    finally:
        await harness.close()


async def test_alpaca_reads_fills_on_its_own_and_each_read_is_counted() -> None:
    """Alpaca's placement reads the fill activities besides the order (two requests, two
    tokens); a look-up of the same order finds its fills among those already read (one)."""
    harness = await AlpacaHarness.start()
    try:
        gate = CountingGate()
        harness.venue.use_gate(gate)
        harness.fake.requests.clear()
        intent = make_intent(**harness.kind)
        await harness.venue.place_order(intent, intent.intent_id)
        found = await harness.venue.locate(intent, intent.intent_id, datetime.now(UTC) - timedelta(minutes=1))

        fill_reads = [r for r in harness.fake.requests if r[1].startswith("/v2/account/activities")]
        assert len(fill_reads) == 1
        assert found is not None and found.filled_quantity == intent.quantity and len(found.fills) == 1
        assert gate.taken == len(harness.fake.requests) == 3
    finally:
        await harness.close()


async def test_alpaca_reads_the_activities_of_a_burst_once_not_per_order() -> None:
    """Forty orders filled, then each read back (as a stream frame per fill makes the executor
    do): the activities are read onwards from the last one read, a page at a time, instead of
    one scan per order; every execution is found, each once."""
    harness = await AlpacaHarness.start()
    try:
        placed = []
        first = make_intent(**harness.kind)
        placed.append(await harness.venue.place_order(first, first.intent_id))
        harness.fault(lot_size="1")
        for _ in range(39):
            intent = make_intent(**harness.kind | {"quantity": "3"})
            placed.append(await harness.venue.place_order(intent, intent.intent_id))
        # Read back by a venue that has read nothing yet (an executor just started).
        fresh = AlpacaVenue(
            harness.fake.key_id, harness.fake.secret_key, transport=httpx.MockTransport(harness.fake.handle)
        )
        await fresh.connect()
        harness.fake.requests.clear()
        read_back = [await fresh.get_order(o.broker_order_id) for o in placed]

        fill_reads = [r for r in harness.fake.requests if r[1].startswith("/v2/account/activities")]
        assert len(fill_reads) == 2  # 118 activities: two pages of 100 (a scan per order: 80)
        by_order: dict[str, list[str]] = {}
        for activity in harness.fake.activities:
            by_order.setdefault(activity["order_id"], []).append(str(activity["id"]))
        assert all(o is not None for o in read_back)
        assert {o.broker_order_id: [f.fill_id for f in o.fills] for o in read_back if o} == by_order
    finally:
        await harness.close()


@pytest.mark.parametrize("name", sorted(HARNESSES))
async def test_a_429_to_a_look_up_is_told_to_the_gate(name: str) -> None:
    """A 429 to a read (not only to a placement) reaches the gate with the broker's wait."""
    harness = await HARNESSES[name]()
    try:
        gate = CountingGate()
        harness.venue.use_gate(gate)
        intent = make_intent(**harness.kind)
        harness.fault(rate_limited_next=1)
        with pytest.raises(VenueRateLimited) as refused:
            await harness.venue.locate(intent, intent.intent_id, datetime.now(UTC) - timedelta(minutes=1))
        assert gate.refusals == [refused.value.retry_after]
        assert gate.taken == 1
    finally:
        await harness.close()


async def test_ibkr_counts_each_message_it_sends_and_a_pacing_violation_pauses_the_gate() -> None:
    """At IBKR an order, a cancel and each of a refresh's three requests take a token; error
    100 (pacing) is told to the gate as a 429 would be."""
    harness = await IbkrHarness.start()
    try:
        gate = CountingGate()
        harness.venue.use_gate(gate)
        resting = make_intent(**harness.kind, order_type="limit", limit_price=Decimal(1))
        placed = await harness.venue.place_order(resting, resting.intent_id)
        assert gate.taken == 1
        await harness.venue.cancel_order(placed.broker_order_id)
        assert gate.taken == 2
        unknown = make_intent(**harness.kind)
        assert await harness.venue.locate(unknown, unknown.intent_id, datetime.now(UTC)) is None
        assert gate.taken == 5  # the refresh: open orders, completed orders, executions

        harness.fault(rate_limited_next=1)
        paced = make_intent(**harness.kind)
        with pytest.raises(VenueRateLimited):
            await harness.venue.place_order(paced, paced.intent_id)

        async def told() -> bool:
            return gate.refusals == [PACING_PAUSE_S]

        await eventually(told)
    finally:
        await harness.close()
