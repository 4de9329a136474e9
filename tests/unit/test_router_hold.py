"""Which brokers a router's intent waits for while some are unsure."""

from __future__ import annotations

import asyncio

import pytest

from contracts import BrokerName
from tests.builders import make_intent
from tests.unit.test_registry import registry, status
from workers.domain.config import MbxConfig, parse_config
from workers.platform.runtime import Worker
from workers.platform.settings import Settings
from workers.router.handlers import RouterHandlers
from workers.router.state import RouterState
from workers.venues.simulated.quotes import SimulatedQuoteSource


def router(config: MbxConfig) -> RouterHandlers:
    """Alpaca and Robinhood went silent together 8 s ago (unsure); IBKR and Schwab beat. The
    registry's clock stands still, so an unsure broker stays unsure."""
    reg = registry(
        status(BrokerName.ALPACA, age=8),
        status(BrokerName.ROBINHOOD, age=8),
        status(BrokerName.IBKR),
        status(BrokerName.SCHWAB),
    )
    assert reg.unsure() == {BrokerName.ALPACA, BrokerName.ROBINHOOD}
    state = RouterState(config, registry=reg)
    return RouterHandlers(Worker("router", Settings(nats_url="nats://127.0.0.1:1")), state, SimulatedQuoteSource())


async def test_an_intent_waits_for_the_unsure_brokers_that_could_take_it_and_no_others() -> None:
    """An equity intent waits while Alpaca or Robinhood is unsure; a failover whose unsure
    brokers both failed it, and an intent in a config without them, are decided at once."""
    handlers = router(MbxConfig())
    held = asyncio.create_task(handlers.hold_for_brokers(make_intent()))
    await asyncio.wait_for(handlers.hold_for_brokers(make_intent(), [BrokerName.ALPACA, BrokerName.ROBINHOOD]), 5)
    without = router(parse_config({"brokers": {"ibkr": {}, "schwab": {}}}))
    await asyncio.wait_for(without.hold_for_brokers(make_intent()), 5)
    assert not held.done()
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
