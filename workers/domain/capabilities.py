"""What each broker supports, from ../shared/reference/broker-apis.md (section 1).

Used by the router's eligibility check and by the simulated venues. Where the reference marks a
fact unverified we keep the conservative choice and say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from contracts import AssetClass, BrokerName, OrderType, TimeInForce

ALL_TYPES = frozenset(OrderType)
ALL_TIF = frozenset(TimeInForce)


@dataclass(frozen=True, slots=True)
class AssetSupport:
    order_types: frozenset[OrderType]
    time_in_force: frozenset[TimeInForce]
    fractional: bool
    notional: bool


@dataclass(frozen=True, slots=True)
class VenueCapabilities:
    broker: BrokerName
    assets: dict[AssetClass, AssetSupport]
    has_client_order_id: bool
    rate_windows: tuple[tuple[int, float], ...]
    """The broker's documented request limits as (requests, seconds) windows, each enforced:
    at most that many requests in any window of that many seconds."""
    orders_per_day: int | None = None
    """Order calls (placements and cancels) the broker allows a day, where it counts them."""

    @property
    def rate_limit_per_minute(self) -> int:
        """Requests a minute the tightest window allows when sustained."""
        return math.floor(min(requests * 60 / seconds for requests, seconds in self.rate_windows))

    def support_for(self, asset: AssetClass) -> AssetSupport | None:
        return self.assets.get(asset)


CAPABILITIES: dict[BrokerName, VenueCapabilities] = {
    BrokerName.ALPACA: VenueCapabilities(
        BrokerName.ALPACA,
        {
            AssetClass.EQUITY: AssetSupport(ALL_TYPES, ALL_TIF, fractional=True, notional=True),
            AssetClass.OPTION: AssetSupport(
                frozenset({OrderType.MARKET, OrderType.LIMIT}),
                frozenset({TimeInForce.DAY}),
                fractional=False,
                notional=False,
            ),
            AssetClass.CRYPTO: AssetSupport(
                frozenset({OrderType.MARKET, OrderType.LIMIT, OrderType.STOP_LIMIT}),
                frozenset({TimeInForce.GTC, TimeInForce.IOC}),
                fractional=True,
                notional=True,
            ),
        },
        has_client_order_id=True,
        rate_windows=((200, 60.0),),  # 200 a minute per account
    ),
    BrokerName.ROBINHOOD: VenueCapabilities(
        BrokerName.ROBINHOOD,
        {
            AssetClass.EQUITY: AssetSupport(
                ALL_TYPES, frozenset({TimeInForce.DAY, TimeInForce.GTC}), fractional=True, notional=True
            ),
            AssetClass.OPTION: AssetSupport(
                frozenset({OrderType.MARKET, OrderType.LIMIT}),
                frozenset({TimeInForce.DAY, TimeInForce.GTC}),
                fractional=False,
                notional=False,
            ),
            AssetClass.CRYPTO: AssetSupport(
                frozenset({OrderType.MARKET, OrderType.LIMIT}),
                frozenset({TimeInForce.GTC, TimeInForce.IOC}),
                fractional=True,
                notional=True,
            ),
        },
        has_client_order_id=True,
        rate_windows=((32, 60.0),),  # about 8 orders per 15 s observed; undocumented
    ),
    BrokerName.COINBASE: VenueCapabilities(
        BrokerName.COINBASE,
        {
            AssetClass.CRYPTO: AssetSupport(
                frozenset({OrderType.MARKET, OrderType.LIMIT, OrderType.STOP_LIMIT}),
                frozenset({TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK}),
                fractional=True,
                notional=True,
            ),
        },
        has_client_order_id=True,
        rate_windows=((30, 1.0),),  # 30 requests/s per user, private REST
    ),
    BrokerName.SCHWAB: VenueCapabilities(
        BrokerName.SCHWAB,
        {
            # Fractional shares (Stock Slices) are not available through the API.
            AssetClass.EQUITY: AssetSupport(ALL_TYPES, ALL_TIF, fractional=False, notional=False),
            AssetClass.OPTION: AssetSupport(ALL_TYPES, ALL_TIF, fractional=False, notional=False),
        },
        has_client_order_id=False,
        rate_windows=((120, 60.0),),  # 120 a minute (4,000 order calls a day below)
        orders_per_day=4000,
    ),
    BrokerName.IBKR: VenueCapabilities(
        BrokerName.IBKR,
        {
            # Fractional equity needs an account permission and is unverified: not offered.
            AssetClass.EQUITY: AssetSupport(ALL_TYPES, ALL_TIF, fractional=False, notional=False),
            AssetClass.OPTION: AssetSupport(ALL_TYPES, ALL_TIF, fractional=False, notional=False),
            AssetClass.CRYPTO: AssetSupport(
                frozenset({OrderType.MARKET, OrderType.LIMIT}),
                frozenset({TimeInForce.DAY, TimeInForce.GTC, TimeInForce.IOC}),
                fractional=True,
                notional=True,
            ),
        },
        has_client_order_id=True,
        rate_windows=((50, 1.0),),  # 50 API messages/s (TWS API; excess closes the connection)
    ),
}
