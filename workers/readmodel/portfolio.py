"""One portfolio across every broker, from Postgres.

- Positions (quantity, average cost, mark) are the brokers' own, from their latest
  ``PositionSnapshot`` (``positions`` table); account values from ``broker_accounts``.
- Realized P&L comes from mbx's own fills (``trade_logs``), average-cost method per broker and
  symbol, net of every fee paid.
- Exposure for the router's risk checks comes from mbx's own records, so it is current with the
  database rather than with the last snapshot: net filled quantity per broker and symbol at the
  latest fill price, plus every working order's remaining value. It is published only when
  account values are known (without a portfolio value, allocation limits cannot be computed
  and stay off). With it go each account's buying power (its last figure less the buys filled
  since and the working buys) and the positions per broker, less what working orders close:
  what the router routes closing orders and checks cash by (docs/routing.md).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import (
    AssetClass,
    BrokerName,
    ExposureSnapshot,
    Portfolio,
    PortfolioPosition,
    SymbolExposure,
)
from workers.domain.fees import traded_value

WORKING = ("new", "submitted", "accepted", "partially_filled", "unknown")
ACCOUNT_LAG_S = 2.0
"""Seconds before an account snapshot's time from which fills count as not in it yet: the
account is read a moment before the snapshot is stamped. Counting a fill twice only makes the
router's figure lower than the broker's."""
FILLED_HORIZON_S = 600.0
"""Orders decided this long before an account report are taken to be in it if filled (a resting
order that fills later is in the next report, within 30 s)."""
HUNDRED = Decimal(100)
CENT = Decimal("0.01")


@dataclass
class _Book:
    """Average-cost bookkeeping of one broker's fills in one symbol."""

    asset: AssetClass
    quantity: Decimal = Decimal(0)
    average: Decimal = Decimal(0)
    realized: Decimal = Decimal(0)

    def apply(self, side: str, quantity: Decimal, price: Decimal, fee: Decimal) -> None:
        signed = quantity if side == "buy" else -quantity
        multiplier = Decimal(100) if self.asset is AssetClass.OPTION else Decimal(1)
        if self.quantity == 0 or (self.quantity > 0) == (signed > 0):
            total = abs(self.quantity) + quantity
            self.average = (self.average * abs(self.quantity) + price * quantity) / total
        else:
            closing = min(quantity, abs(self.quantity))
            direction = Decimal(1) if self.quantity > 0 else Decimal(-1)
            self.realized += closing * (price - self.average) * direction * multiplier
            if quantity > abs(self.quantity):  # the position flips: the rest opens at this price
                self.average = price
        self.quantity += signed
        if self.quantity == 0:
            self.average = Decimal(0)
        self.realized -= fee


@dataclass
class _Fills:
    books: dict[tuple[str, str], _Book] = field(default_factory=dict)

    def realized_by_symbol(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = defaultdict(Decimal)
        for (_, symbol), book in self.books.items():
            out[symbol] += book.realized
        return out


def allocation(values: dict[BrokerName, Decimal]) -> dict[BrokerName, Decimal]:
    """Percent of the total per broker, to the cent, summing to exactly 100."""
    total = sum(values.values(), Decimal(0))
    if total <= 0:
        return {}
    shares = {b: (v / total * HUNDRED).quantize(CENT) for b, v in values.items()}
    largest = max(shares, key=lambda b: values[b])
    shares[largest] += HUNDRED - sum(shares.values(), Decimal(0))
    return shares


class PortfolioReader:
    """The seed's portfolio API over Postgres: unified positions, allocation and exposure."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._books = _Fills()
        self._last_fill = 0
        self._books_lock = asyncio.Lock()
        self.fills_read = 0
        """Fill rows read so far: each request reads only the fills added since the last."""

    async def _rows(self, sql: str, **params: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(text(sql), params)).mappings().all())

    async def _fills(self) -> _Fills:
        """Average-cost books per broker and symbol as running totals: each call applies only
        the fills stored since the previous one (by row id, the order they were written), so a
        request costs the same however long the trade history is."""
        async with self._books_lock:
            rows = await self._rows(
                "SELECT t.id, t.broker_name, t.symbol, t.side, t.quantity, t.price, t.fee, "
                "coalesce(o.asset_class, 'equity') AS asset_class "
                "FROM trade_logs t LEFT JOIN orders o "
                "ON o.broker_name = t.broker_name AND o.broker_order_id = t.broker_order_id "
                "WHERE t.id > :after ORDER BY t.id",
                after=self._last_fill,
            )
            for r in rows:
                key = (r["broker_name"], r["symbol"])
                book = self._books.books.get(key)
                if book is None:
                    book = self._books.books[key] = _Book(AssetClass(r["asset_class"]))
                book.apply(r["side"], r["quantity"], r["price"], r["fee"])
                self._last_fill = max(self._last_fill, int(r["id"]))
            self.fills_read += len(rows)
            return self._books

    async def _account_values(self) -> tuple[dict[BrokerName, Decimal], Decimal]:
        rows = await self._rows("SELECT broker_name, cash, portfolio_value FROM broker_accounts")
        values = {BrokerName(r["broker_name"]): r["portfolio_value"] for r in rows}
        return values, sum((r["cash"] for r in rows), Decimal(0))

    async def get_broker_allocation(self) -> dict[BrokerName, Decimal]:
        values, _ = await self._account_values()
        return allocation(values)

    async def get_unified_portfolio(self) -> Portfolio:
        rows = await self._rows(
            "SELECT p.*, c.last_synced_at FROM positions p "
            "LEFT JOIN multi_broker_connections c ON c.broker_name = p.broker_name ORDER BY p.symbol, p.broker_name"
        )
        realized = (await self._fills()).realized_by_symbol()
        values, cash = await self._account_values()
        by_symbol: dict[str, list[Any]] = defaultdict(list)
        for r in rows:
            by_symbol[r["symbol"]].append(r)
        positions = [
            self._merge(symbol, lines, realized.get(symbol, Decimal(0))) for symbol, lines in by_symbol.items()
        ]
        synced = [r["last_synced_at"] for r in rows if r["last_synced_at"] is not None]
        market_value = sum((p.market_value for p in positions), Decimal(0))
        return Portfolio(
            positions=tuple(positions),
            cash=cash,
            market_value=market_value,
            portfolio_value=sum(values.values(), Decimal(0)),
            unrealized_pnl=sum((p.unrealized_pnl for p in positions), Decimal(0)),
            realized_pnl=sum(realized.values(), Decimal(0)),
            allocation=allocation(values),
            as_of=min(synced) if synced else None,
        )

    @staticmethod
    def _merge(symbol: str, lines: list[Any], realized: Decimal) -> PortfolioPosition:
        quantity = sum((r["quantity"] for r in lines), Decimal(0))
        same_side = [r for r in lines if quantity != 0 and (r["quantity"] > 0) == (quantity > 0)]
        held = sum((r["quantity"] for r in same_side), Decimal(0))
        average = sum((r["quantity"] * r["average_cost"] for r in same_side), Decimal(0)) / held if held else None
        marks = [r["market_price"] for r in lines if r["market_price"] is not None]
        return PortfolioPosition(
            symbol=symbol,
            asset_class=AssetClass(lines[0]["asset_class"]),
            quantity=quantity,
            average_cost=average,
            market_price=marks[0] if marks else None,
            market_value=sum((r["market_value"] or Decimal(0) for r in lines), Decimal(0)),
            unrealized_pnl=sum((r["unrealized_pnl"] or Decimal(0) for r in lines), Decimal(0)),
            realized_pnl=realized,
            by_broker={BrokerName(r["broker_name"]): r["quantity"] for r in lines},
        )

    async def _working_orders(self, symbol: str | None = None) -> list[Any]:
        return await self._rows(
            "SELECT broker_name, symbol, asset_class, side, quantity, notional, filled_quantity, average_price, "
            "reference_price "
            "FROM orders WHERE broker_name IS NOT NULL AND status = ANY(:working) "
            "AND (CAST(:symbol AS text) IS NULL OR symbol = :symbol)",
            working=list(WORKING),
            symbol=symbol,
        )

    @staticmethod
    def _order_value(order: Any, mark: Decimal | None) -> Decimal:
        """Signed USD value still to trade on a working order (0 when no price is known)."""
        sign = Decimal(1) if order["side"] == "buy" else Decimal(-1)
        asset = AssetClass(order["asset_class"])
        if order["quantity"] is not None:
            price = mark or order["average_price"]
            left = order["quantity"] - order["filled_quantity"]
            return sign * traded_value(asset, left, Decimal(price)) if price else Decimal(0)
        done = Decimal(order["filled_quantity"]) * Decimal(order["average_price"] or 0)
        return sign * max(Decimal(order["notional"] or 0) - done, Decimal(0))

    async def _held(self, symbol: str | None = None) -> list[Any]:
        """Net filled quantity per broker and symbol, with the symbol's latest fill price (across
        brokers), from the running totals in ``held_positions``: a row per position, whatever
        the number of fills (this runs every few seconds)."""
        return await self._rows(
            "WITH marks AS (SELECT DISTINCT ON (symbol) symbol, last_price AS price FROM held_positions"
            " WHERE CAST(:symbol AS text) IS NULL OR symbol = :symbol"
            " ORDER BY symbol, last_executed_at DESC, last_fill DESC)"
            " SELECT h.broker_name, h.symbol, h.quantity, marks.price,"
            " coalesce((SELECT o.asset_class FROM orders o"
            " WHERE o.broker_name = h.broker_name AND o.symbol = h.symbol LIMIT 1), 'equity') AS asset_class"
            " FROM held_positions h JOIN marks USING (symbol)"
            " WHERE CAST(:symbol AS text) IS NULL OR h.symbol = :symbol",
            symbol=symbol,
        )

    async def get_cross_broker_exposure(self, symbol: str) -> SymbolExposure:
        positions: dict[BrokerName, Decimal] = {}
        mark: Decimal | None = None
        for row in await self._held(symbol):
            mark = row["price"]
            positions[BrokerName(row["broker_name"])] = traded_value(
                AssetClass(row["asset_class"]), row["quantity"], row["price"]
            )
        in_flight: dict[BrokerName, Decimal] = defaultdict(Decimal)
        for order in await self._working_orders(symbol):
            in_flight[BrokerName(order["broker_name"])] += self._order_value(order, mark)
        everything = list(positions.values()) + list(in_flight.values())
        return SymbolExposure(
            symbol=symbol,
            positions=positions,
            in_flight=dict(in_flight),
            net=sum(everything, Decimal(0)),
            gross=sum((abs(v) for v in everything), Decimal(0)),
        )

    async def exposure_snapshot(self) -> ExposureSnapshot | None:
        """What the router's risk checks need, or None while no account values are known."""
        values, _ = await self._account_values()
        if not values:
            return None
        by_broker: dict[BrokerName, Decimal] = defaultdict(Decimal)
        by_symbol: dict[str, Decimal] = defaultdict(Decimal)
        quantities: dict[str, Decimal] = defaultdict(Decimal)
        marks: dict[str, Decimal] = {}
        held = await self._held()
        for row in held:
            marks[row["symbol"]] = row["price"]
            value = traded_value(AssetClass(row["asset_class"]), row["quantity"], row["price"])
            by_broker[BrokerName(row["broker_name"])] += abs(value)
            by_symbol[row["symbol"]] += value
            quantities[row["symbol"]] += row["quantity"]
        working = await self._working_orders()
        for order in working:
            value = self._order_value(order, marks.get(order["symbol"]))
            by_broker[BrokerName(order["broker_name"])] += abs(value)
            by_symbol[order["symbol"]] += value
        [newest] = await self._rows("SELECT max(decided_at) AS at FROM multi_broker_routes")
        return ExposureSnapshot(
            created_at=newest["at"] or datetime.now(UTC),
            portfolio_value=max(sum(values.values(), Decimal(0)), Decimal(0)),
            by_broker=_nonzero(by_broker.items()),
            by_symbol=_nonzero(by_symbol.items()),
            positions=_nonzero(quantities.items()),
            buying_power=await self._buying_power(working, marks),
            holdings=_holdings(held, working, marks),
        )

    async def _buying_power(self, working: list[Any], marks: dict[str, Decimal]) -> dict[BrokerName, Decimal]:
        """Each account's last reported buying power, less what the buys filled since that report
        cost (their orders' filled value and fees, as the execution reports say: a fill is in
        the order before its own message is stored; from ``ACCOUNT_LAG_S`` before the report, as
        a fill a moment older may not be in it yet) and the working buy orders' remaining value:
        what the router may still spend there. Orders decided more than ``FILLED_HORIZON_S``
        before the report are taken to be in it."""
        rows = await self._rows(
            "SELECT a.broker_name, a.buying_power, coalesce(("
            " SELECT sum(o.filled_quantity * coalesce(o.average_price, 0)"
            " * CASE WHEN o.asset_class = 'option' THEN 100 ELSE 1 END + o.fees)"
            " FROM orders o WHERE o.broker_name = a.broker_name AND o.side = 'buy' AND o.filled_quantity > 0"
            " AND o.decided_at > c.last_synced_at - make_interval(secs => :horizon)"
            " AND coalesce(o.first_fill_at, o.updated_at) > c.last_synced_at - make_interval(secs => :lag)), 0)"
            " AS spent"
            " FROM broker_accounts a JOIN multi_broker_connections c ON c.broker_name = a.broker_name",
            lag=ACCOUNT_LAG_S,
            horizon=FILLED_HORIZON_S,
        )
        power = {BrokerName(r["broker_name"]): r["buying_power"] - r["spent"] for r in rows}
        for order in working:
            broker = BrokerName(order["broker_name"])
            if order["side"] == "buy" and broker in power:
                # A new symbol has no mark yet: the price the router decided with stands in.
                mark = marks.get(order["symbol"]) or order["reference_price"]
                power[broker] -= self._order_value(order, mark)
        return power


def _holdings(held: list[Any], working: list[Any], marks: dict[str, Decimal]) -> dict[BrokerName, dict[str, Decimal]]:
    """Net quantity per broker and symbol from the fills, less what working orders already close
    (a sell's remaining quantity from a long, a buy's from a short): what a new order can close."""
    holdings: dict[BrokerName, dict[str, Decimal]] = defaultdict(dict)
    for row in held:
        if row["quantity"] != 0:
            holdings[BrokerName(row["broker_name"])][row["symbol"]] = row["quantity"]
    for order in working:
        position = holdings.get(BrokerName(order["broker_name"]), {})
        quantity = position.get(order["symbol"])
        if quantity is None:
            continue
        if order["quantity"] is not None:
            left = order["quantity"] - order["filled_quantity"]
        else:  # a dollar amount: in units at the mark, when there is one
            mark = marks.get(order["symbol"])
            done = Decimal(order["filled_quantity"]) * Decimal(order["average_price"] or 0)
            left = max(Decimal(order["notional"] or 0) - done, Decimal(0)) / mark if mark else Decimal(0)
        if quantity > 0 and order["side"] == "sell":
            position[order["symbol"]] = max(quantity - left, Decimal(0))
        elif quantity < 0 and order["side"] == "buy":
            position[order["symbol"]] = min(quantity + left, Decimal(0))
    return dict(holdings)  # a position its working orders close whole stays, at 0: still known


def _nonzero(items: Iterable[tuple[Any, Decimal]]) -> dict[Any, Decimal]:
    return {k: v for k, v in items if v != 0}
