"""Reference prices from Coinbase's public tickers, against the fake Coinbase."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from tests.fakes.coinbase import FakeCoinbase
from workers.venues.coinbase.quotes import CoinbaseQuoteSource
from workers.venues.simulated.quotes import QuoteModel


async def test_crypto_pairs_are_quoted_from_the_public_ticker_and_cached() -> None:
    fake = FakeCoinbase()
    quotes = CoinbaseQuoteSource(transport=httpx.MockTransport(fake.handle), cache_s=60.0, requests_per_minute=2)
    quote = await quotes.quote("ETH-USD")
    expected = QuoteModel().quote("ETH-USD")
    assert quote is not None and (quote.bid, quote.ask, quote.source) == (expected.bid, expected.ask, "coinbase")
    assert datetime.now(UTC) - quote.at < timedelta(seconds=5)
    assert await quotes.quote("ETH-USD") is quote  # cached
    assert await quotes.quote("AAPL") is None  # not a crypto pair: not asked
    assert await quotes.quote("UNKNOWN-USD") is None  # not listed
    assert await quotes.quote("SOL-USD") is None  # the third request this minute is not sent
    assert fake.requests == [
        ("GET", "/market/products/ETH-USD/ticker"),
        ("GET", "/market/products/UNKNOWN-USD/ticker"),
    ]
    fake.faults.outage = True
    fresh = CoinbaseQuoteSource(transport=httpx.MockTransport(fake.handle))
    assert await fresh.quote("BTC-USD") is None  # unreachable: no quote, no exception
    await quotes.close()
    await fresh.close()
