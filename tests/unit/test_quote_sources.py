"""One quote source per asset class (``market_data.sources``, issue 30 point 6): each symbol is
priced by its class's source, today's single ``market_data.source`` still works alone, and a
source that cannot quote its class, or names a broker that is not configured, is refused with
the key it is at."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from contracts import AssetClass
from workers.domain.config import ConfigError, parse_config
from workers.domain.quotes import Quote, QuotesByAssetClass
from workers.venues.alpaca.quotes import AlpacaQuoteSource
from workers.venues.coinbase.quotes import CoinbaseQuoteSource
from workers.venues.factory import build_quote_source, check_config
from workers.venues.simulated.quotes import SimulatedQuoteSource

ALPACA_KEYS = {"adapter": "simulated", "credentials": {"api_key": "k", "secret_key": "s"}}


class NamedSource:
    """A quote source that quotes every symbol at 1/2 and says who it is."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.asked: list[str] = []

    async def quote(self, symbol: str) -> Quote | None:
        self.asked.append(symbol)
        return Quote(symbol, Decimal(1), Decimal(2), datetime.now(UTC), self.name)


def refusal(market_data: dict[str, Any], brokers: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        check_config(parse_config({"market_data": market_data, "brokers": brokers or {}}))
    return str(info.value)


def test_each_symbol_is_asked_of_its_asset_classes_source_and_others_of_the_default() -> None:
    """Crypto pairs go to the crypto source, OCC symbols to the option source, the rest to the default."""
    default, crypto, option = NamedSource("sim"), NamedSource("cb"), NamedSource("ib")
    quotes = QuotesByAssetClass(default, {AssetClass.CRYPTO: crypto, AssetClass.OPTION: option})

    sources = [asyncio.run(quotes.quote(s)) for s in ("AAPL", "BTC-USD", "AAPL  261218C00190000")]

    assert [q.source for q in sources if q] == ["sim", "cb", "ib"]
    assert (default.asked, crypto.asked, option.asked) == (["AAPL"], ["BTC-USD"], ["AAPL  261218C00190000"])
    assert quotes.name == "crypto=cb,option=ib,other=sim"


def test_todays_single_source_is_built_alone_as_before() -> None:
    """Without ``sources`` the router gets the one source of ``market_data.source``, not a composite."""
    assert isinstance(build_quote_source(parse_config({})), SimulatedQuoteSource)
    same = parse_config({"market_data": {"sources": {"equity": "simulated"}}})
    assert isinstance(build_quote_source(same), SimulatedQuoteSource)


def test_sources_per_asset_class_build_one_source_each() -> None:
    config = parse_config(
        {
            "brokers": {"alpaca": ALPACA_KEYS, "coinbase": {}},
            "market_data": {"sources": {"equity": "alpaca", "option": "alpaca", "crypto": "coinbase"}},
        }
    )
    quotes = build_quote_source(config)

    assert isinstance(quotes, QuotesByAssetClass)
    assert isinstance(quotes.source_for(AssetClass.EQUITY), AlpacaQuoteSource)
    assert quotes.source_for(AssetClass.OPTION) is quotes.source_for(AssetClass.EQUITY)
    assert isinstance(quotes.source_for(AssetClass.CRYPTO), CoinbaseQuoteSource)
    assert quotes.name == "crypto=coinbase,equity=alpaca,option=alpaca"


def test_an_unknown_asset_class_is_refused_naming_the_known_ones() -> None:
    message = refusal({"sources": {"bonds": "simulated"}})
    assert "market_data.sources" in message
    assert "unknown asset class bonds (known: equity, crypto, option)" in message


def test_a_source_that_does_not_quote_its_asset_class_is_refused() -> None:
    message = refusal({"sources": {"equity": "coinbase"}}, {"coinbase": {}})
    assert "market_data.sources.equity: 'coinbase' does not quote equity (it quotes crypto)" in message


def test_a_source_broker_that_is_not_configured_or_disabled_is_refused() -> None:
    assert "market_data.sources.crypto: 'coinbase' is not configured in brokers:" in refusal(
        {"sources": {"crypto": "coinbase"}}
    )
    assert "market_data.sources.crypto: 'coinbase' is disabled in brokers:" in refusal(
        {"sources": {"crypto": "coinbase"}}, {"coinbase": {"enabled": False}}
    )


def test_a_broker_without_a_quote_source_and_missing_keys_are_named() -> None:
    message = refusal({"sources": {"option": "schwab", "equity": "alpaca"}}, {"schwab": {}, "alpaca": {}})
    assert "market_data.sources.option: 'schwab' is a broker without a quote source in mbx (known: " in message
    assert "brokers.alpaca.credentials.api_key" in message
    assert "needed by market_data.sources.equity 'alpaca' (not set)" in message


def test_the_single_source_is_still_checked_as_before() -> None:
    """Today's messages for ``market_data.source`` are unchanged (the CLI test reads one)."""
    assert "market_data.source: unknown quote source 'nonsense' (known: alpaca, coinbase, ibkr, simulated)" in (
        refusal({"source": "nonsense"})
    )
    check_config(parse_config({"market_data": {"source": "coinbase"}}))  # no broker needed, as before
