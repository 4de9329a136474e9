"""Reference prices from Alpaca's market data, against the fake Alpaca: stocks, options and
crypto pairs read from their documented shapes, cached per symbol, bounded per minute, and
nothing (never an exception) when the data API cannot answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from tests.fakes.alpaca import FakeAlpaca
from workers.venues.alpaca.quotes import AlpacaQuoteSource
from workers.venues.simulated.quotes import QuoteModel


def source(fake: FakeAlpaca, **options: float) -> AlpacaQuoteSource:
    return AlpacaQuoteSource(fake.key_id, fake.secret_key, transport=httpx.MockTransport(fake.handle), **options)  # type: ignore[arg-type]


async def test_stocks_options_and_crypto_are_quoted() -> None:
    fake = FakeAlpaca()
    quotes = source(fake)
    model = QuoteModel()
    for symbol in ("AAPL", "AAPL  270115C00200000", "BTC-USD"):
        quote = await quotes.quote(symbol)
        assert quote is not None and quote.source == "alpaca"
        expected = model.quote(symbol.replace(" ", ""))  # the fake prices the symbol as Alpaca writes it
        assert (quote.bid, quote.ask) == (expected.bid, expected.ask)
        assert datetime.now(UTC) - quote.at < timedelta(seconds=5)
    paths = [path for _, path in fake.requests]
    assert paths == [
        "/v2/stocks/AAPL/quotes/latest",
        "/v1beta1/options/quotes/latest",
        "/v1beta3/crypto/us/latest/quotes",
    ]
    await quotes.close()


async def test_a_quote_is_cached_and_requests_are_bounded() -> None:
    fake = FakeAlpaca()
    quotes = source(fake, cache_s=60.0, requests_per_minute=2)
    first = await quotes.quote("MSFT")
    assert await quotes.quote("MSFT") is first  # from the cache
    assert await quotes.quote("IBM") is not None
    assert await quotes.quote("KO") is None  # the third request this minute is not sent
    assert len(fake.requests) == 2
    await quotes.close()


async def test_stale_quotes_keep_their_time_and_failures_are_none() -> None:
    fake = FakeAlpaca(stale_quotes=True)
    quotes = source(fake, cache_s=0.0)
    stale = await quotes.quote("AAPL")
    assert stale is not None and datetime.now(UTC) - stale.at > timedelta(minutes=59)  # the router judges its age
    fake.faults.auth_expired = True
    assert await quotes.quote("AAPL") is None
    fake.faults.auth_expired = False
    fake.faults.outage = True
    assert await quotes.quote("AAPL") is None
    fake.faults.outage = False
    fake.faults.rate_limited_next = 1
    assert await quotes.quote("AAPL") is None
    assert await quotes.quote("AAPL") is not None
    await quotes.close()
