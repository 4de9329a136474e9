"""The venues the contract suite runs against, each with its market and its fault switches:
the simulator, and each real adapter talking to its stateful fake broker (no network)."""

from __future__ import annotations

import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import httpx

from contracts import BrokerName
from tests.fakes.alpaca import FakeAlpaca
from tests.fakes.coinbase import FakeCoinbase
from tests.fakes.ibkr import FakeGateway
from tests.fakes.robinhood import FakeRobinhood
from tests.fakes.schwab import FakeSchwab
from tests.fakes.stream import FakeStream, serve_stream, serve_user_stream
from workers.domain.venue import Venue, VenueOrder
from workers.venues.alpaca.venue import AlpacaVenue
from workers.venues.coinbase.venue import CoinbaseVenue
from workers.venues.ibkr.order_ids import MemoryOrderIds
from workers.venues.ibkr.venue import IbkrVenue
from workers.venues.robinhood.venue import RobinhoodCryptoVenue
from workers.venues.schwab.tokens import TokenStore
from workers.venues.schwab.venue import SchwabVenue
from workers.venues.simulated.venue import SimulatedVenue

UNKNOWN_SYMBOL = "UNKNOWNX"
"""A symbol no broker lists: the fakes refuse it, and the simulator is told to."""


class Harness(Protocol):
    venue: Venue
    kind: dict[str, Any]
    """What the venue trades, as intent fields (its symbol, asset class, time in force)."""
    average_cost_known: bool

    async def trade(self, order: VenueOrder, quantity: Decimal | None = None) -> None:
        """The market reaches a working order: fill ``quantity`` of it (all that is left)."""
        ...

    def fault(self, **changes: Any) -> None: ...

    async def close(self) -> None: ...


class StreamingHarness(Harness, Protocol):
    """A venue whose broker pushes order changes, with a way to cut its stream."""

    venue: Any  # a Venue that is also SupportsUpdates

    async def drop_stream(self) -> None: ...


EQUITY: dict[str, Any] = {"symbol": "AAPL"}
CRYPTO: dict[str, Any] = {"symbol": "BTC-USD", "asset_class": "crypto", "time_in_force": None}


@dataclass
class SimulatorHarness:
    venue: SimulatedVenue
    kind: dict[str, Any] = field(default_factory=lambda: EQUITY)
    average_cost_known: bool = True

    @classmethod
    async def start(cls, broker: BrokerName = BrokerName.ALPACA) -> SimulatorHarness:
        venue = SimulatedVenue(broker)
        venue.switch_faults({"unknown_symbols": [UNKNOWN_SYMBOL]})
        await venue.connect()
        return cls(venue)

    @classmethod
    async def start_schwab(cls) -> SimulatorHarness:
        """The simulator playing a broker without client order ids."""
        return await cls.start(BrokerName.SCHWAB)

    async def trade(self, order: VenueOrder, quantity: Decimal | None = None) -> None:
        await self.venue.trade(order.broker_order_id, quantity)

    def fault(self, **changes: Any) -> None:
        self.venue.switch_faults(changes)

    async def close(self) -> None:
        await self.venue.disconnect()


class FakeBrokerHarness:
    """A real adapter against its fake broker and the fake's stream."""

    venue: AlpacaVenue | CoinbaseVenue
    fake: FakeAlpaca | FakeCoinbase
    stream: FakeStream
    exits: AsyncExitStack

    async def trade(self, order: VenueOrder, quantity: Decimal | None = None) -> None:
        self.fake.trade(order.broker_order_id, quantity)

    def fault(self, **changes: Any) -> None:
        self.fake.switch_faults(changes)

    async def drop_stream(self) -> None:
        await self.stream.drop()

    async def close(self) -> None:
        await self.venue.disconnect()
        await self.exits.aclose()


@dataclass
class AlpacaHarness(FakeBrokerHarness):
    venue: AlpacaVenue
    fake: FakeAlpaca
    stream: FakeStream
    exits: AsyncExitStack
    kind: dict[str, Any] = field(default_factory=lambda: EQUITY)
    average_cost_known: bool = True

    @classmethod
    async def start(cls, venue_type: type[AlpacaVenue] = AlpacaVenue) -> AlpacaHarness:
        fake = FakeAlpaca()
        exits = AsyncExitStack()
        stream = await exits.enter_async_context(serve_stream(fake))
        venue = venue_type(
            fake.key_id, fake.secret_key, stream_url=stream.url, transport=httpx.MockTransport(fake.handle)
        )
        await venue.connect()
        return cls(venue, fake, stream, exits)


@dataclass
class CoinbaseHarness(FakeBrokerHarness):
    venue: CoinbaseVenue
    fake: FakeCoinbase
    stream: FakeStream
    exits: AsyncExitStack
    kind: dict[str, Any] = field(default_factory=lambda: CRYPTO)
    average_cost_known: bool = False
    """Coinbase keeps balances, not their cost."""

    @classmethod
    async def start(cls) -> CoinbaseHarness:
        fake = FakeCoinbase()
        exits = AsyncExitStack()
        stream = await exits.enter_async_context(serve_user_stream(fake))
        venue = CoinbaseVenue(
            fake.key_name, fake.private_key, stream_url=stream.url, transport=httpx.MockTransport(fake.handle)
        )
        await venue.connect()
        return cls(venue, fake, stream, exits)


@dataclass
class RobinhoodHarness:
    venue: RobinhoodCryptoVenue
    fake: FakeRobinhood
    kind: dict[str, Any] = field(default_factory=lambda: CRYPTO)
    average_cost_known: bool = False
    """Robinhood's holdings carry no cost."""

    @classmethod
    async def start(cls) -> RobinhoodHarness:
        fake = FakeRobinhood()
        venue = RobinhoodCryptoVenue(fake.api_key, fake.private_key, transport=httpx.MockTransport(fake.handle))
        await venue.connect()
        return cls(venue, fake)

    async def trade(self, order: VenueOrder, quantity: Decimal | None = None) -> None:
        self.fake.trade(order.broker_order_id, quantity)

    def fault(self, **changes: Any) -> None:
        self.fake.switch_faults(changes)

    async def close(self) -> None:
        await self.venue.disconnect()


@dataclass
class SchwabHarness:
    """schwab-py's client over a stored login, against the fake Trader API and OAuth server."""

    venue: SchwabVenue
    fake: FakeSchwab
    store: TokenStore
    home: tempfile.TemporaryDirectory[str]
    kind: dict[str, Any] = field(default_factory=lambda: EQUITY)
    average_cost_known: bool = True

    @classmethod
    async def start(cls) -> SchwabHarness:
        fake = FakeSchwab()
        home = tempfile.TemporaryDirectory(prefix="mbx-schwab-")
        store = TokenStore(Path(home.name) / "schwab-token.json")
        store.save_login(fake.issue_tokens())
        venue = SchwabVenue(fake.app_key, fake.app_secret, store, transport=httpx.MockTransport(fake.handle))
        await venue.connect()
        return cls(venue, fake, store, home)

    async def trade(self, order: VenueOrder, quantity: Decimal | None = None) -> None:
        self.fake.trade(order.broker_order_id, quantity)

    def fault(self, **changes: Any) -> None:
        self.fake.switch_faults(changes)

    async def close(self) -> None:
        await self.venue.disconnect()
        self.home.cleanup()


@dataclass
class IbkrHarness:
    """ib_async's IB with its client answered by the fake gateway."""

    venue: IbkrVenue
    gateway: FakeGateway
    kind: dict[str, Any] = field(default_factory=lambda: EQUITY)
    average_cost_known: bool = True

    @classmethod
    async def start(cls) -> IbkrHarness:
        gateway = FakeGateway()
        venue = IbkrVenue("127.0.0.1", 4002, 7, MemoryOrderIds(), timeout_s=2.0, make_ib=gateway.make_ib)
        await venue.connect()
        return cls(venue, gateway)

    async def trade(self, order: VenueOrder, quantity: Decimal | None = None) -> None:
        self.gateway.trade(int(order.broker_order_id), quantity)

    def fault(self, **changes: Any) -> None:
        self.gateway.switch_faults(changes)

    async def drop_stream(self) -> None:
        for client in list(self.gateway.clients):
            client.drop()

    async def close(self) -> None:
        await self.venue.disconnect()


HARNESSES = {
    "simulated": SimulatorHarness.start,
    "simulated_schwab": SimulatorHarness.start_schwab,
    "schwab": SchwabHarness.start,
    "ibkr": IbkrHarness.start,
    "alpaca": AlpacaHarness.start,
    "coinbase": CoinbaseHarness.start,
    "robinhood_crypto": RobinhoodHarness.start,
}
STREAMING = {"alpaca": AlpacaHarness.start, "coinbase": CoinbaseHarness.start, "ibkr": IbkrHarness.start}
"""The venues whose broker streams order changes (the simulator is polled)."""
