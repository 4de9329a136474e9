"""Simulated brokers for paper trading and tests.

Prices come from one deterministic quote model shared by every venue, so cross-broker
comparisons are consistent. Fees follow each broker's published schedule (entry tier) from
../shared/reference/broker-apis.md.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

from contracts import AssetClass, BrokerName, OrderIntent, OrderStatus, OrderType, Side
from workers.fees import DEFAULT_FEES, commission, round_up_to_cent
from workers.venues.base import (
    Quote,
    VenueAmbiguous,
    VenueDuplicate,
    VenueFill,
    VenueOrder,
    VenueRejected,
    VenueUnavailable,
)
from workers.venues.book import MemoryOrderBook, OrderBook
from workers.venues.capabilities import CAPABILITIES, VenueCapabilities

CENT = Decimal("0.01")
QTY_STEP = Decimal("0.000000001")


class QuoteModel:
    """A stable mid price per symbol, derived from the symbol itself, with a fixed spread."""

    def __init__(self, spread_bps: Decimal = Decimal(2)) -> None:
        self.spread_bps = spread_bps

    def mid(self, symbol: str) -> Decimal:
        digest = int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:4], "big")
        if symbol.endswith("-USD"):  # crypto pairs trade at larger prices
            return (Decimal(1000) + Decimal(digest % 6_000_000) / 100).quantize(CENT)
        return (Decimal(5) + Decimal(digest % 50_000) / 100).quantize(CENT)

    def quote(self, symbol: str) -> Quote:
        mid = self.mid(symbol)
        half = (mid * self.spread_bps / Decimal(20_000)).quantize(Decimal("0.0001"), ROUND_HALF_UP)
        half = max(half, Decimal("0.0001"))
        return Quote(symbol, mid - half, mid + half, datetime.now(UTC))


def estimate_fee(broker: BrokerName, asset: AssetClass, quantity: Decimal, price: Decimal) -> Decimal:
    """What the simulated broker charges: its commission from the shared fee schedules."""
    schedule = DEFAULT_FEES[broker].get(asset)
    if schedule is None:
        return Decimal(0)
    return round_up_to_cent(commission(schedule, asset, quantity, price))


@dataclass
class Faults:
    """Failures to inject, switched at runtime. Counters count down one per placement."""

    outage: bool = False
    """Every request fails before reaching the broker (VenueUnavailable)."""
    timeouts_after_accept: int = 0
    """The next N placements are accepted, then the reply is lost (VenueAmbiguous)."""
    reject_next: int = 0
    """The next N placements are refused for lack of buying power (another broker may take them)."""
    hidden_lookups: int = 0
    """The next N lookups miss every order, as a broker's list lags behind its book."""


# What a broker does with a client order id it has seen before (../shared/reference, section 7.2).
RETURNS_ORIGINAL = frozenset({BrokerName.COINBASE, BrokerName.ROBINHOOD})
REFUSES_DUPLICATE = frozenset({BrokerName.ALPACA, BrokerName.IBKR})  # Alpaca 422, IBKR error 103


class SimulatedVenue:
    """A simulated broker. Its book (``MemoryOrderBook`` or the NATS-backed ``KvOrderBook``)
    is the broker's memory: an order placed stays there whatever happens to the executor."""

    def __init__(self, broker: BrokerName, quotes: QuoteModel | None = None, book: OrderBook | None = None) -> None:
        self._broker = broker
        self._quotes = quotes or QuoteModel()
        self.book: OrderBook = book or MemoryOrderBook()
        self.faults = Faults()
        self._connected = False

    @property
    def broker(self) -> BrokerName:
        return self._broker

    @property
    def capabilities(self) -> VenueCapabilities:
        return CAPABILITIES[self._broker]

    @property
    def is_connected(self) -> bool:
        return self._connected and not self.faults.outage

    async def connect(self) -> None:
        self._connected = True

    async def disconnect(self) -> None:
        self._connected = False

    async def get_quote(self, symbol: str) -> Quote:
        return self._quotes.quote(symbol)

    async def locate(self, intent: OrderIntent, client_order_id: str, since: datetime) -> VenueOrder | None:
        if self.faults.outage:
            raise VenueUnavailable(f"{self._broker} is unreachable")
        if self.faults.hidden_lookups > 0:
            self.faults.hidden_lookups -= 1
            return None
        if self.capabilities.has_client_order_id:
            return await self.book.by_client_id(client_order_id)
        # No client order id (Schwab): list recent orders and match what the intent describes.
        candidates = [
            o
            for o in await self.book.all()
            if o.symbol == intent.symbol
            and o.side == intent.side
            and o.submitted_at is not None
            and o.submitted_at >= since
            and (intent.quantity is None or o.quantity == intent.quantity)
        ]
        return min(candidates, key=lambda o: o.submitted_at or since) if candidates else None

    async def place_order(self, intent: OrderIntent, client_order_id: str) -> VenueOrder:
        if self.faults.outage:
            raise VenueUnavailable(f"{self._broker} is unreachable")
        if self.faults.reject_next > 0:
            self.faults.reject_next -= 1
            raise VenueRejected(
                "insufficient_buying_power", f"{self._broker} account has no buying power", order_specific=False
            )
        support = self.capabilities.support_for(intent.asset_class)
        if support is None:
            raise VenueRejected(
                "unsupported_asset", f"{self._broker} does not trade {intent.asset_class}", order_specific=False
            )
        quote = self._quotes.quote(intent.symbol)
        touch = quote.ask if intent.side is Side.BUY else quote.bid
        quantity = intent.quantity if intent.quantity is not None else self._quantity_for(intent, touch)
        if quantity <= 0:
            raise VenueRejected(
                "invalid_quantity", "the notional buys less than the smallest unit", order_specific=True
            )
        # Unique across venue instances and restarts, as a real broker's order ids are.
        broker_order_id = f"{self._broker}-{uuid.uuid4().hex[:20]}"
        if self.capabilities.has_client_order_id:
            existing = await self.book.claim(client_order_id, broker_order_id)
            if existing is not None:
                if self._broker in REFUSES_DUPLICATE:
                    raise VenueDuplicate(f"client_order_id {client_order_id} must be unique")
                original = await self.book.get(existing)
                if original is not None:
                    return original
        order = VenueOrder(
            broker_order_id=broker_order_id,
            client_order_id=client_order_id if self.capabilities.has_client_order_id else "",
            status=OrderStatus.ACCEPTED,
            quantity=quantity,
            symbol=intent.symbol,
            side=str(intent.side),
            submitted_at=datetime.now(UTC),
        )
        if self._marketable(intent, touch):
            fee = estimate_fee(self._broker, intent.asset_class, quantity, touch)
            order.fills.append(VenueFill(f"{broker_order_id}-1", quantity, touch, fee, datetime.now(UTC)))
            order.filled_quantity, order.average_price, order.fees = quantity, touch, fee
            order.status = OrderStatus.FILLED
        await self.book.save(order)
        if self.faults.timeouts_after_accept > 0:
            self.faults.timeouts_after_accept -= 1
            raise VenueAmbiguous(f"{self._broker} accepted the order but the reply was lost")
        return order

    @staticmethod
    def _quantity_for(intent: OrderIntent, price: Decimal) -> Decimal:
        assert intent.notional is not None
        return (intent.notional / price).quantize(QTY_STEP, ROUND_DOWN)

    @staticmethod
    def _marketable(intent: OrderIntent, touch: Decimal) -> bool:
        if intent.order_type is OrderType.MARKET:
            return True
        if intent.order_type is OrderType.LIMIT:
            assert intent.limit_price is not None
            return intent.limit_price >= touch if intent.side is Side.BUY else intent.limit_price <= touch
        return False  # stop orders wait for their trigger, which the simulation does not move to
