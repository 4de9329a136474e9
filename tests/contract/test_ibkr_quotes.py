"""Reference prices from IB market data, against the fake gateway: snapshots of the best bid and
ask through the router's own connection, cached, and None for what IB does not know."""

from __future__ import annotations

from tests.fakes.ibkr import FakeGateway
from workers.venues.ibkr.quotes import IbkrQuoteSource
from workers.venues.simulated.quotes import QuoteModel


async def test_symbols_are_quoted_from_ib_snapshots_and_cached() -> None:
    gateway = FakeGateway()
    quotes = IbkrQuoteSource("127.0.0.1", 4002, 107, make_ib=gateway.make_ib, cache_s=60.0)
    try:
        for symbol in ("AAPL", "BTC-USD", "AAPL261218C00190000"):
            quote = await quotes.quote(symbol)
            expected = QuoteModel().quote(symbol)
            assert quote is not None and (quote.bid, quote.ask, quote.source) == (expected.bid, expected.ask, "ibkr")
        assert await quotes.quote("AAPL") is not None
        assert gateway.quote_requests == ["AAPL", "BTC-USD", "AAPL261218C00190000"]  # the repeat was cached
        assert await quotes.quote("UNKNOWNX") is None  # error 200: no such contract
        assert [c.clientId for c in gateway.clients] == [107]  # its own connection
    finally:
        await quotes.close()


async def test_an_unreachable_gateway_gives_no_quote_rather_than_an_error() -> None:
    gateway = FakeGateway()
    gateway.switch_faults({"outage": True})
    quotes = IbkrQuoteSource("127.0.0.1", 4002, 107, make_ib=gateway.make_ib)
    assert await quotes.quote("AAPL") is None
    gateway.switch_faults({"outage": False})
    assert await quotes.quote("MSFT") is not None  # connects when the gateway is back
    await quotes.close()
