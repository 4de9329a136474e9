"""Simulated brokers for paper trading and tests.

Prices come from one deterministic quote model shared by every venue, so cross-broker
comparisons are consistent. Fees follow each broker's published schedule (entry tier) from
../shared/reference/broker-apis.md.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

from contracts import AssetClass, BrokerName, OrderIntent, OrderStatus, OrderType, Side
from workers.fees import DEFAULT_FEES, commission, round_up_to_cent
from workers.venues.base import Quote, VenueFill, VenueOrder, VenueRejected
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


class SimulatedVenue:
    """An in-memory broker. A repeated client order id returns the original order."""

    def __init__(self, broker: BrokerName, quotes: QuoteModel | None = None) -> None:
        self._broker = broker
        self._quotes = quotes or QuoteModel()
        self._orders: dict[str, VenueOrder] = {}
        self._connected = False

    @property
    def broker(self) -> BrokerName:
        return self._broker

    @property
    def capabilities(self) -> VenueCapabilities:
        return CAPABILITIES[self._broker]

    @property
    def is_connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        self._connected = True

    async def disconnect(self) -> None:
        self._connected = False

    async def get_quote(self, symbol: str) -> Quote:
        return self._quotes.quote(symbol)

    async def find_order(self, client_order_id: str) -> VenueOrder | None:
        return self._orders.get(client_order_id)

    @property
    def orders(self) -> list[VenueOrder]:
        """The broker's own book (tests count duplicates here)."""
        return list(self._orders.values())

    async def place_order(self, intent: OrderIntent, client_order_id: str) -> VenueOrder:
        existing = self._orders.get(client_order_id)
        if existing is not None:
            return existing
        support = self.capabilities.support_for(intent.asset_class)
        if support is None:
            raise VenueRejected(
                "unsupported_asset", f"{self._broker} does not trade {intent.asset_class}", order_specific=False
            )
        quote = self._quotes.quote(intent.symbol)
        buying = intent.side is Side.BUY
        touch = quote.ask if buying else quote.bid
        quantity = intent.quantity if intent.quantity is not None else self._quantity_for(intent, touch)
        if quantity <= 0:
            raise VenueRejected(
                "invalid_quantity", "the notional buys less than the smallest unit", order_specific=True
            )
        order = VenueOrder(
            # Unique across venue instances and restarts, as a real broker's order ids are.
            broker_order_id=f"{self._broker}-{uuid.uuid4().hex[:20]}",
            client_order_id=client_order_id,
            status=OrderStatus.ACCEPTED,
            quantity=quantity,
        )
        self._orders[client_order_id] = order
        if self._marketable(intent, touch):
            price = touch  # a marketable order fills at the touch, even with a better limit
            fee = estimate_fee(self._broker, intent.asset_class, quantity, price)
            now = datetime.now(UTC)
            order.fills.append(VenueFill(f"{order.broker_order_id}-1", quantity, price, fee, now))
            order.filled_quantity = quantity
            order.average_price = price
            order.fees = fee
            order.status = OrderStatus.FILLED
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
