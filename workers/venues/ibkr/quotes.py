"""Reference prices from IB market data: a snapshot of the best bid and ask through the router's
own API connection to TWS or IB Gateway (``reqTickersAsync``), cached and bounded as every
quote source is. Needs market-data subscriptions on the IB account for what it quotes."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from ib_async import IB, Contract
from ib_async.ib import StartupFetch

from workers.domain.quotes import Quote
from workers.domain.venue import VenueUnavailable
from workers.venues.ibkr.venue import contract_of_symbol
from workers.venues.quote_cache import CachedQuotes

SOURCE = "ibkr"
QUOTE_CLIENT_ID_OFFSET = 100
"""The router's connection uses the executor's client id plus this (each connection needs its own)."""


class IbkrQuoteSource(CachedQuotes):
    name = SOURCE

    def __init__(
        self,
        host: str,
        port: int,
        client_id: int,
        *,
        requests_per_minute: int = 180,
        cache_s: float = 1.0,
        timeout_s: float = 5.0,
        make_ib: Callable[[], IB] | None = None,
    ) -> None:
        super().__init__(None, requests_per_minute=requests_per_minute, cache_s=cache_s)
        self._host, self._port, self._client_id = host, port, client_id
        self._timeout_s = timeout_s
        self._ib = (make_ib or IB)()
        self._connecting = asyncio.Lock()
        self._contracts: dict[str, Contract] = {}

    async def _connected(self) -> IB:
        async with self._connecting:
            if not self._ib.isConnected():
                try:
                    await self._ib.connectAsync(
                        self._host,
                        self._port,
                        clientId=self._client_id,
                        timeout=self._timeout_s,
                        readonly=True,
                        fetchFields=StartupFetch(0),
                    )
                except (OSError, TimeoutError, ConnectionError) as exc:
                    raise VenueUnavailable(
                        f"ibkr market data: no API connection to {self._host}:{self._port} ({type(exc).__name__})"
                    ) from None
        return self._ib

    async def _fetch(self, symbol: str) -> Quote | None:
        ib = await self._connected()
        contract = self._contracts.get(symbol)
        if contract is None:  # IB quotes qualified contracts only (with their conId)
            [qualified] = await asyncio.wait_for(ib.qualifyContractsAsync(contract_of_symbol(symbol)), self._timeout_s)
            if not isinstance(qualified, Contract):
                return None  # IB does not know it (or knows several)
            contract = self._contracts[symbol] = qualified
        tickers = await asyncio.wait_for(ib.reqTickersAsync(contract), self._timeout_s)
        if not tickers:
            return None
        bid, ask = tickers[0].bid, tickers[0].ask
        if not _price(bid) or not _price(ask):
            return None  # no such contract, no subscription, or no market now
        return Quote(symbol, Decimal(str(bid)), Decimal(str(ask)), datetime.now(UTC), SOURCE)

    async def close(self) -> None:
        self._ib.disconnect()


def _price(value: float) -> bool:
    return isinstance(value, float | int) and not math.isnan(value) and value > 0
