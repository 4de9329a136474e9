"""Simulated brokers for paper trading and tests.

Prices come from one deterministic quote model shared by every venue, so cross-broker
comparisons are consistent. Fees follow each broker's published schedule (entry tier) from
../shared/reference/broker-apis.md.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

from contracts import AccountSnapshot, AssetClass, BrokerName, OrderIntent, OrderStatus, OrderType, PositionLine, Side
from workers.domain.capabilities import CAPABILITIES, VenueCapabilities
from workers.domain.fees import DEFAULT_FEES, commission, round_up_to_cent, traded_value
from workers.domain.order_state import Execution, check_move
from workers.domain.quotes import Quote
from workers.domain.venue import (
    OpenGate,
    RequestGate,
    VenueAmbiguous,
    VenueAuthFailed,
    VenueDuplicate,
    VenueFill,
    VenueOrder,
    VenueRateLimited,
    VenueRejected,
    VenueUnavailable,
)
from workers.venues.simulated.book import MemoryOrderBook, OrderBook, Request
from workers.venues.simulated.impact import ImpactModel, Take
from workers.venues.simulated.quotes import QuoteModel

CENT = Decimal("0.01")
QTY_STEP = Decimal("0.000000001")


def estimate_fee(broker: BrokerName, asset: AssetClass, quantity: Decimal, price: Decimal) -> Decimal:
    """What the simulated broker charges: its commission from the shared fee schedules."""
    schedule = DEFAULT_FEES[broker].get(asset)
    if schedule is None:
        return Decimal(0)
    return round_up_to_cent(commission(schedule, asset, quantity, price))


@dataclass
class Faults:
    """Failures to inject, switched at runtime (``mbx sim fault``, ``mbx.control.<broker>``).
    Counters count down one per request."""

    outage: bool = False
    """Every request fails before reaching the broker (VenueUnavailable)."""
    timeouts_after_accept: int = 0
    """The next N placements are accepted, then the reply is lost (VenueAmbiguous)."""
    reject_next: int = 0
    """The next N placements are refused for lack of buying power (another broker may take them)."""
    hidden_lookups: int = 0
    """The next N lookups miss every order, as a broker's list lags behind its book."""
    latency_ms: float = 0.0
    """Median time a request takes; each request draws from a log-normal spread around it."""
    unknown_symbols: list[str] = field(default_factory=list)
    """Symbols the broker does not list: orders for them are refused (order-specific)."""
    lot_size: Decimal | None = None
    """Market orders larger than this fill in several executions of at most this size."""
    rate_limited_next: int = 0
    """The next N requests are refused with a 429 that asks for a 2 s wait (VenueRateLimited)."""
    auth_expired: bool = False
    """Every request is refused as unauthorised (VenueAuthFailed) until switched off."""
    warning: str = ""
    """A warning the broker's heartbeat carries while it is up (as a login about to end)."""

    def update(self, changes: dict[str, Any]) -> None:
        """Apply changes by field name; unknown fields or bad values raise ValueError."""
        for name, value in changes.items():
            if name not in self.__dataclass_fields__:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(self.__dataclass_fields__)}")
            setattr(self, name, _coerce(name, value))

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in asdict(self).items()}


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 0:
        raise TypeError
    return int(value)


def _milliseconds(value: Any) -> float:
    if isinstance(value, bool) or float(value) < 0:
        raise TypeError
    return float(value)


def _symbols(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 500:
        raise TypeError
    return value


def _lot(value: Any) -> Decimal | None:
    if value is None:
        return None
    lot = Decimal(str(value))
    if lot <= 0:
        raise TypeError
    return lot


COERCE: dict[str, Callable[[Any], Any]] = {
    "outage": _flag,
    "auth_expired": _flag,
    "timeouts_after_accept": _count,
    "reject_next": _count,
    "hidden_lookups": _count,
    "rate_limited_next": _count,
    "latency_ms": _milliseconds,
    "unknown_symbols": _symbols,
    "lot_size": _lot,
    "warning": _text,
}
"""How each fault's value is checked and converted (``mbx fault`` sends text and JSON)."""


def _coerce(name: str, value: Any) -> Any:
    try:
        return COERCE[name](value)
    except (TypeError, ValueError, ArithmeticError):
        raise ValueError(f"fault {name!r}: bad value {value!r}") from None


class RateWindow:
    """The broker's side of a rate limit: at most ``limit`` requests in any ``per_seconds``
    window, else a 429. Records the most requests it ever saw in one window."""

    def __init__(self, limit: int, per_seconds: float) -> None:
        self.limit = limit
        self.per_seconds = per_seconds
        self._times: deque[float] = deque()
        self.peak = 0
        self.refused = 0

    def admit(self, broker: BrokerName) -> None:
        now = time.monotonic()
        while self._times and self._times[0] <= now - self.per_seconds:
            self._times.popleft()
        if len(self._times) >= self.limit:
            self.refused += 1
            retry_after = self._times[0] + self.per_seconds - now
            raise VenueRateLimited(f"{broker}: 429 too many requests", retry_after=max(retry_after, 0.0))
        self._times.append(now)
        self.peak = max(self.peak, len(self._times))


# What a broker does with a client order id it has seen before (../shared/reference, section 7.2).
RETURNS_ORIGINAL = frozenset({BrokerName.COINBASE, BrokerName.ROBINHOOD})
REFUSES_DUPLICATE = frozenset({BrokerName.ALPACA, BrokerName.IBKR})  # Alpaca 422, IBKR error 103

PAPER_CASH = Decimal(100_000)
"""A paper account's starting cash, as broker paper accounts start (brokers.<name>.paper_cash)."""
"""Starting cash of a simulated account: large, so long runs and benchmarks do not run dry
(pass ``cash`` for buying-power rejections)."""


@dataclass
class _Account:
    """Positions (quantity, signed cost at average cost) and net cash spent, from every fill of
    the orders seen so far; ``seen`` is the book position read up to. Only orders still working
    are remembered (fills already counted): a finished order is never saved again."""

    seen: int = 0
    held: dict[tuple[str, str], tuple[Decimal, Decimal]] = field(default_factory=dict)
    spent: Decimal = Decimal(0)
    counted: dict[str, int] = field(default_factory=dict)

    def apply(self, order: VenueOrder) -> None:
        asset = order.asset_class or "equity"
        key = (order.symbol, asset)
        start = self.counted.pop(order.broker_order_id, 0)
        for f in order.fills[start:]:
            value = traded_value(AssetClass(asset), f.quantity, f.price)
            self.spent += (value if order.side == Side.BUY else -value) + f.fee
            quantity, cost = self.held.get(key, (Decimal(0), Decimal(0)))
            signed = f.quantity if order.side == Side.BUY else -f.quantity
            if quantity == 0 or (quantity > 0) == (signed > 0):
                quantity, cost = quantity + signed, cost + signed * f.price
            else:  # reducing: keep the average cost of what is left
                average = cost / quantity
                quantity += signed
                cost = average * quantity
            self.held[key] = (quantity, cost)
        if not order.status.is_terminal:
            self.counted[order.broker_order_id] = len(order.fills)


def account_check(  # noqa: PLR0917  (the figures a broker's check takes, each a value)
    broker: BrokerName,
    account_type: str,
    available: Decimal,
    held: Decimal,
    side: Side,
    value: Decimal,
    closing: Decimal,
) -> Decimal:
    """What a broker's account allows: the cash the order takes from the buying power when it
    fills (negative: what it gives back), or ``VenueRejected`` (not specific to the order:
    another broker's account may take it). ``held`` is the position in the symbol (long > 0),
    ``value`` the order's value and ``closing`` the value of the part that sells a held long.

    A buy needs its value in buying power. A sale of a held long gives its proceeds back. The
    part of a sale beyond the long opens a short: refused at a cash account; at a margin account
    it needs its value in buying power, held as margin while the short is open."""
    if side is Side.BUY:
        if value > available:
            raise VenueRejected(
                "insufficient_buying_power",
                f"{broker}: the order needs {value:.2f} USD, the account has {available:.2f}",
                order_specific=False,
            )
        return value
    short = value - closing
    if short <= 0:
        return -closing
    if account_type != "margin":
        raise VenueRejected(
            "short_sale_not_allowed",
            f"{broker}: a cash account cannot sell short (it holds {held} of the symbol)",
            order_specific=False,
        )
    if short > available:
        raise VenueRejected(
            "insufficient_buying_power",
            f"{broker}: the short sale needs {short:.2f} USD of margin, the account has {available:.2f}",
            order_specific=False,
        )
    return short - closing


class SimulatedVenue:
    """A simulated broker. Its book (``MemoryOrderBook`` or the NATS-backed ``KvOrderBook``)
    is the broker's memory: an order placed stays there whatever happens to the executor.

    Every request (placing, looking up, cancelling, account and positions) passes the broker's
    rate window, sized from the documented limit unless ``rate_limit`` = (requests, seconds)
    says otherwise. Buying power is checked against the cash this venue object has seen spent;
    replicas in separate processes each keep their own view of it.

    Without ``impact`` every marketable order fills at the fixed touch of the quote model. With
    it, orders fill at the price the impact model gives for their size, a limit order takes only
    what the book holds up to its limit (the rest stays working), and ``get_quote`` shows the
    broker's displaced price. The displacement lives in this venue object.
    """

    def __init__(
        self,
        broker: BrokerName,
        quotes: QuoteModel | None = None,
        book: OrderBook | None = None,
        *,
        rate_limit: tuple[int, float] | None = None,
        cash: Decimal = PAPER_CASH,
        account_type: str = "cash",
        impact: ImpactModel | None = None,
    ) -> None:
        self._broker = broker
        self._quotes = quotes or QuoteModel()
        self.impact = impact
        self.book: OrderBook = book or MemoryOrderBook()
        self.faults = Faults()
        self.place_requests: Counter[str] = Counter()
        """Placement requests per client order id as sent by mbx (what the broker's request log
        would show; at Schwab the id is not kept with the order)."""
        self._requested_as: dict[str, str] = {}
        limit, per = rate_limit or CAPABILITIES[broker].rate_windows[0]
        self.rate = RateWindow(limit, per)
        self.starting_cash = cash
        self.account_type = account_type
        self._spent = Decimal(0)
        self._account = _Account()
        self._account_lock = asyncio.Lock()
        self._connected = False
        self._random = random.Random(str(broker))  # noqa: S311  (simulated latency, not security)
        self._gate: RequestGate = OpenGate()

    def use_gate(self, gate: RequestGate) -> None:
        """Count every request against ``gate`` (the executor's rate budget), and tell it of 429s."""
        self._gate = gate

    def placed_for(self, broker_order_id: str) -> str:
        """The client order id mbx sent when this venue object created the order ("" if none)."""
        return self._requested_as.get(broker_order_id, "")

    def switch_faults(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Switch faults by name (``mbx fault``); returns every fault as it now stands."""
        self.faults.update(changes)
        return self.faults.as_dict()

    def rate_stats(self) -> dict[str, Any]:
        window = self.rate
        return {
            "limit": window.limit,
            "per_seconds": window.per_seconds,
            "peak": window.peak,
            "refused": window.refused,
        }

    @property
    def broker(self) -> BrokerName:
        return self._broker

    @property
    def capabilities(self) -> VenueCapabilities:
        return CAPABILITIES[self._broker]

    def supported_assets(self) -> frozenset[AssetClass]:
        return frozenset(self.capabilities.assets)

    @property
    def is_connected(self) -> bool:
        return not self.down_because

    @property
    def down_because(self) -> str:
        if not self._connected:
            return f"{self._broker}: not connected"
        if self.faults.outage:
            return f"{self._broker} is unreachable (simulated outage)"
        if self.faults.auth_expired:
            return f"{self._broker}: the credentials were refused (simulated); switch the fault off to renew them"
        return ""

    @property
    def warning(self) -> str:
        return self.faults.warning

    async def connect(self) -> None:
        self._connected = True

    async def disconnect(self) -> None:
        self._connected = False

    async def _request(self) -> None:
        """What every call pays: the executor's rate budget (as a real adapter counts each
        request), reachability, the rate window, and network latency."""
        await self._gate.take()
        if self.faults.outage:
            raise VenueUnavailable(f"{self._broker} is unreachable")
        if self.faults.auth_expired:
            raise VenueAuthFailed(f"{self._broker}: the credentials were refused (401)")
        try:
            if self.faults.rate_limited_next > 0:
                self.faults.rate_limited_next -= 1
                raise VenueRateLimited(f"{self._broker}: 429 too many requests", retry_after=2.0)
            self.rate.admit(self._broker)
        except VenueRateLimited as exc:
            await self._gate.refused(exc.retry_after)
            raise
        if self.faults.latency_ms > 0:
            median = self.faults.latency_ms
            drawn = self._random.lognormvariate(math.log(median), 0.5)
            await asyncio.sleep(min(drawn, 10 * median) / 1000)

    async def get_quote(self, symbol: str) -> Quote:
        quote = self._quotes.quote(symbol)
        return quote if self.impact is None else self.impact.shifted(quote)

    async def get_order(self, broker_order_id: str) -> VenueOrder | None:
        await self._request()
        return await self.book.get(broker_order_id)

    async def locate(
        self, intent: OrderIntent, client_order_id: str, since: datetime, exclude: frozenset[str] = frozenset()
    ) -> VenueOrder | None:
        await self._request()
        found = await self._locate(intent, client_order_id, since, exclude)
        await self.book.note(Request("lookup", client_order_id, found=found is not None))
        return found

    async def _locate(
        self, intent: OrderIntent, client_order_id: str, since: datetime, exclude: frozenset[str]
    ) -> VenueOrder | None:
        if self.faults.hidden_lookups > 0:
            self.faults.hidden_lookups -= 1
            return None
        if self.capabilities.has_client_order_id:
            return await self.book.by_client_id(client_order_id)
        # No client order id (Schwab): list recent orders and match what the intent describes
        # (what its shape lock tells apart: symbol, side, size and limit price).
        candidates = [
            o
            for o in await self.book.saved_since(since)
            if o.symbol == intent.symbol
            and o.broker_order_id not in exclude
            and o.side == intent.side
            and o.limit_price == intent.limit_price
            and o.submitted_at is not None
            and o.submitted_at >= since
            and (intent.quantity is None or o.quantity == intent.quantity)
        ]
        return min(candidates, key=lambda o: o.submitted_at or since) if candidates else None

    async def cancel_order(self, broker_order_id: str) -> VenueOrder:
        await self._request()
        order = await self.book.get(broker_order_id)
        if order is None:
            raise VenueRejected("unknown_order", f"{self._broker} has no order {broker_order_id}", order_specific=True)
        if order.status.is_terminal:
            raise VenueRejected(
                "too_late_to_cancel", f"order {broker_order_id} is already {order.status}", order_specific=True
            )
        order.status = check_move(order.status, OrderStatus.CANCELLED)
        await self.book.save(order)
        return order

    async def get_account(self) -> AccountSnapshot:
        await self._request()
        positions = await self._positions()
        value = sum((p.market_value for p in positions), Decimal(0))
        cash = self.starting_cash - await self._net_spent()
        # A short's proceeds sit in cash but are not spendable, and its margin is held too.
        shorts = sum((-p.market_value for p in positions if p.market_value < 0), Decimal(0))
        return AccountSnapshot(
            account_id=f"paper-{self._broker}",
            cash=cash,
            buying_power=max(cash - 2 * shorts, Decimal(0)),
            portfolio_value=cash + value,
        )

    async def get_positions(self) -> list[PositionLine]:
        await self._request()
        return await self._positions()

    async def _net_spent(self) -> Decimal:
        return (await self._account_state()).spent

    async def _positions(self) -> list[PositionLine]:
        """Positions from the fills in the book, at average cost; the mark is the quote's mid."""
        held = (await self._account_state()).held
        lines = []
        for (symbol, asset), (quantity, cost) in sorted(held.items()):
            if quantity == 0:
                continue
            asset_class = AssetClass(asset)
            mark = self._quotes.mid(symbol)
            average = abs(cost / quantity)
            value = traded_value(asset_class, quantity, mark)
            lines.append(
                PositionLine(
                    symbol=symbol,
                    asset_class=asset_class,
                    quantity=quantity,
                    average_cost=average.quantize(Decimal("0.0001")),
                    market_price=mark,
                    market_value=value,
                    unrealized_pnl=(value - traded_value(asset_class, quantity, average)).quantize(CENT),
                )
            )
        return lines

    async def _account_state(self) -> _Account:
        """The account as the book's fills make it, brought up to date with what was saved
        since the last look (reading the whole book each time grows with every order)."""
        async with self._account_lock:
            async for seq, order in self.book.changes(self._account.seen):
                self._account.apply(order)
                self._account.seen = seq
        return self._account

    async def place_order(self, intent: OrderIntent, client_order_id: str) -> VenueOrder:
        self.place_requests[client_order_id] += 1  # an attempt, whatever becomes of it
        await self._request()
        await self.book.note(Request("place", client_order_id))
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
        if intent.symbol in self.faults.unknown_symbols:
            raise VenueRejected("unknown_symbol", f"{self._broker} does not list {intent.symbol}", order_specific=True)
        quote = self._quotes.quote(intent.symbol)
        touch = quote.ask if intent.side is Side.BUY else quote.bid
        quantity = self._size(intent, quote, touch)
        if quantity <= 0:
            raise VenueRejected(
                "invalid_quantity", "the notional buys less than the smallest unit", order_specific=True
            )
        price = self._priced_at(intent, touch, quantity)
        held = Decimal(0)
        if intent.side is Side.SELL:
            held = (await self._account_state()).held.get((intent.symbol, str(intent.asset_class)), (held, held))[0]
        cash_change = account_check(
            self._broker,
            self.account_type,
            self.starting_cash - self._spent,
            held,
            intent.side,
            traded_value(intent.asset_class, quantity, price),
            traded_value(intent.asset_class, min(quantity, max(held, Decimal(0))), price),
        )
        # Unique across venue instances and restarts, as a real broker's order ids are.
        broker_order_id = f"{self._broker}-{uuid.uuid4().hex[:20]}"
        now = datetime.now(UTC)
        order = VenueOrder(
            broker_order_id=broker_order_id,
            client_order_id=client_order_id if self.capabilities.has_client_order_id else "",
            status=OrderStatus.ACCEPTED,
            quantity=quantity,
            symbol=intent.symbol,
            side=str(intent.side),
            asset_class=str(intent.asset_class),
            limit_price=intent.limit_price,
            submitted_at=now,
        )
        taken = self._trade_on_arrival(order, intent, touch, now)
        if self.capabilities.has_client_order_id:
            existing = await self.book.claim(client_order_id, order)
            if existing is not None:
                self._give_back(taken)  # nothing traded: the broker holds the order already
                if self._broker in REFUSES_DUPLICATE:
                    raise VenueDuplicate(f"client_order_id {client_order_id} must be unique")
                original = await self.book.get(existing) or await self.book.by_client_id(client_order_id)
                if original is not None:
                    return original
        await self.book.save(order, new=True)  # a lookup may have saved it, and a trade followed
        self._requested_as[broker_order_id] = client_order_id
        if order.fills:
            self._spent += cash_change
        if self.faults.timeouts_after_accept > 0:
            self.faults.timeouts_after_accept -= 1
            raise VenueAmbiguous(f"{self._broker} accepted the order but the reply was lost")
        return order

    async def trade(self, broker_order_id: str, quantity: Decimal | None = None) -> VenueOrder:
        """The market reaches a working order: fill ``quantity`` of it (all that is left when
        None) at its limit price, or at the mid for an order without one. For tests and
        demos: the simulation's quotes do not move by themselves."""
        order = await self.book.get(broker_order_id)
        if order is None or order.status.is_terminal:
            raise ValueError(f"no working order {broker_order_id} at {self._broker}")
        size = quantity if quantity is not None else order.leaves_quantity
        price = order.limit_price or self._quotes.mid(order.symbol)
        self._execute(order, AssetClass(order.asset_class or "equity"), size, price, datetime.now(UTC))
        await self.book.save(order)
        return order

    def _fill(self, order: VenueOrder, asset: AssetClass, price: Decimal, now: datetime) -> None:
        """Fill the whole order at ``price``, in lots of at most ``lot_size`` when one is set."""
        lot = self.faults.lot_size or order.quantity
        while order.leaves_quantity > 0:
            self._execute(order, asset, min(lot, order.leaves_quantity), price, now)

    def _size(self, intent: OrderIntent, quote: Quote, touch: Decimal) -> Decimal:
        """The order's quantity: as given, or what its notional is worth at the touch. Under the
        impact model that is the touch the broker shows, and a buy's amount also pays for the
        impact (one step down from the shown touch's quantity, so it spends at most the amount)."""
        if intent.quantity is not None:
            return intent.quantity
        if self.impact is None:
            return self._quantity_for(intent, touch)
        quantity = self._quantity_for(intent, self._touch(self.impact.shifted(quote), intent.side))
        if intent.side is Side.BUY and quantity > 0:
            average = self.impact.average_price(intent.symbol, intent.asset_class, intent.side, touch, quantity)
            quantity = self._quantity_for(intent, average)
        return quantity

    def _priced_at(self, intent: OrderIntent, touch: Decimal, quantity: Decimal) -> Decimal:
        """The price the account check values the order at: its limit price, else what filling
        it now would pay (the touch, or its average price under the impact model)."""
        if intent.limit_price is not None:
            return intent.limit_price
        if self.impact is None:
            return touch
        return self.impact.average_price(intent.symbol, intent.asset_class, intent.side, touch, quantity)

    def _trade_on_arrival(self, order: VenueOrder, intent: OrderIntent, touch: Decimal, now: datetime) -> list[Take]:
        """Fill what the market gives the order as it arrives; returns what it took from the
        impact model's book (nothing without the model)."""
        if self.impact is not None:
            return self._take(self.impact, order, intent, touch, now)
        if self._marketable(intent, touch):
            self._fill(order, intent.asset_class, touch, now)
        return []

    def _take(
        self, impact: ImpactModel, order: VenueOrder, intent: OrderIntent, touch: Decimal, now: datetime
    ) -> list[Take]:
        """Fill what the book holds for the order at the impact model's prices, in lots of at
        most ``lot_size``: all of a market order; of a limit order, only what fills without
        crossing its limit (the rest stays working). ``touch`` is before displacement."""
        if intent.order_type is OrderType.MARKET:
            size = order.quantity
        elif intent.order_type is OrderType.LIMIT:
            assert intent.limit_price is not None
            step = Decimal(1) if order.quantity == order.quantity.to_integral_value() else QTY_STEP
            available = impact.available(
                intent.symbol, intent.asset_class, intent.side, touch, intent.limit_price, step
            )
            size = min(order.quantity, available)
        else:
            return []  # stop orders wait for their trigger, which the simulation does not move to
        lot = self.faults.lot_size or order.quantity
        taken: list[Take] = []
        while size > 0:
            take = impact.take(intent.symbol, intent.asset_class, intent.side, touch, min(lot, size))
            price = take.price
            if intent.limit_price is not None:  # rounding to the price step never crosses the limit
                price = min(price, intent.limit_price) if intent.side is Side.BUY else max(price, intent.limit_price)
            self._execute(order, intent.asset_class, take.quantity, price, now)
            taken.append(take)
            size -= take.quantity
        return taken

    def _give_back(self, taken: list[Take]) -> None:
        """Undo the executions of an order the broker turned out to hold already."""
        if self.impact is not None:
            for take in taken:
                self.impact.give_back(take)

    def _execute(self, order: VenueOrder, asset: AssetClass, size: Decimal, price: Decimal, now: datetime) -> None:
        """One execution, through the order state machine (which refuses an overfill)."""
        execution = Execution(order.quantity, order.status, order.filled_quantity, order.average_price, order.fees)
        fee = estimate_fee(self._broker, asset, size, price)
        execution.fill(size, price, fee)
        order.fills.append(VenueFill(f"{order.broker_order_id}-{len(order.fills) + 1}", size, price, fee, now))
        order.status, order.filled_quantity = execution.status, execution.filled_quantity
        order.average_price, order.fees = execution.average_price, execution.fees

    @staticmethod
    def _touch(quote: Quote, side: Side) -> Decimal:
        return quote.ask if side is Side.BUY else quote.bid

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
