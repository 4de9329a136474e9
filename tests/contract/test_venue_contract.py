"""Every venue passes one contract: the simulator, and each real adapter against its fake broker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.contract.checks import CHECKS, STREAM_CHECKS, a_lost_reply_is_ambiguous_and_the_order_is_found
from tests.contract.harness import HARNESSES, STREAMING, AlpacaHarness, Harness, StreamingHarness
from workers.domain.venue import VenueAmbiguous
from workers.venues.alpaca.venue import AlpacaVenue


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
@pytest.mark.parametrize("venue", sorted(HARNESSES))
async def test_contract(venue: str, check: Callable[[Harness], Awaitable[None]]) -> None:
    harness = await HARNESSES[venue]()
    try:
        await check(harness)
    finally:
        await harness.close()


@pytest.mark.parametrize("check", STREAM_CHECKS, ids=[c.__name__ for c in STREAM_CHECKS])
@pytest.mark.parametrize("venue", sorted(STREAMING))
async def test_stream_contract(venue: str, check: Callable[[StreamingHarness], Awaitable[None]]) -> None:
    harness = await STREAMING[venue]()
    try:
        await check(harness)
    finally:
        await harness.close()


class ResendingAlpaca(AlpacaVenue):
    """Wrong on purpose: after a lost reply it sends the order again under a fresh client id,
    as a naive retry would."""

    async def place_order(self, intent, client_order_id):  # type: ignore[no-untyped-def]
        try:
            return await super().place_order(intent, client_order_id)
        except VenueAmbiguous:
            return await super().place_order(intent, client_order_id + "-retry")


async def test_a_broken_adapter_fails_the_contract() -> None:
    harness = await AlpacaHarness.start(ResendingAlpaca)
    try:
        with pytest.raises(BaseException) as failed:
            await a_lost_reply_is_ambiguous_and_the_order_is_found(harness)
        assert "DID NOT RAISE" in str(failed.value)
        orders = {o["client_order_id"] for o in harness.fake.orders.values()}
        assert len(orders) == 2  # what the contract caught: a second order at the broker
    finally:
        await harness.close()
