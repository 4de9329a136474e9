"""Market impact for a simulated broker: a book of fixed depth that refills over time.

The model is the block-shaped limit order book of Obizhaeva and Wang ("Optimal trading strategy
and supply/demand dynamics", 2013), linear and with exponential recovery, one book per broker and
symbol:

- Beyond the touch the book holds ``depth`` units per basis point of price, so taking ``q``
  units walks the price by ``q / depth`` bps and pays on average half of that walk. A buy of
  ``q`` against an ask ``a`` with the price already displaced by ``d`` bps fills on average at
  ``a * (1 + (d + q / (2 * depth)) / 10^4)``; a sell against the bid ``b`` at
  ``b * (1 + (d - q / (2 * depth)) / 10^4)``.
- The walk stays as the broker's displacement ``d`` (signed: buys push it up, sells down), which
  shifts the quotes the broker shows and halves every ``recovery_s`` seconds as the book refills:
  ``d(t) = d(t0) * 2^(-(t - t0) / recovery_s)``.

Each broker's book is its own, so two brokers each taking half of an order pay half the impact
of one broker taking it all. Pure arithmetic over an injectable clock: nothing here does I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

from contracts import AssetClass, BrokerName, Side
from workers.domain.config import ImpactConfig
from workers.domain.quotes import Quote

BPS = Decimal(10_000)
TWO = Decimal(2)
PRICE_STEP = Decimal("0.0001")
"""Fill prices and shown quotes are rounded to this, as the simulator's quotes are."""
SETTLED_BPS = Decimal("0.000001")
"""A displacement smaller than this has recovered: it is forgotten."""


@dataclass(frozen=True, slots=True)
class Take:
    """One execution against the book: its size and average price, and the walk it left."""

    symbol: str
    quantity: Decimal
    price: Decimal
    walk_bps: Decimal
    """The displacement this execution added (signed: a buy's is positive)."""
    at: float
    """The clock reading when it was taken."""


class ImpactModel:
    """One simulated broker's books: the depth of each symbol, and how far each price is
    displaced now. ``depth(symbol, asset_class)`` gives the units per bps; ``clock`` is
    seconds on any monotonic scale (tests inject their own)."""

    def __init__(
        self,
        depth: Callable[[str, AssetClass], Decimal],
        recovery_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if recovery_s <= 0:
            raise ValueError(f"recovery_s must be more than 0 seconds, got {recovery_s:g}")
        self._depth = depth
        self.recovery_s = recovery_s
        self._clock = clock
        self._displaced: dict[str, tuple[Decimal, float]] = {}

    @classmethod
    def from_config(
        cls, config: ImpactConfig, broker: BrokerName, clock: Callable[[], float] = time.monotonic
    ) -> ImpactModel:
        """The model of ``broker`` as ``simulation.impact`` sets it."""
        return cls(lambda symbol, asset: config.depth_of(broker, symbol, asset), config.recovery_s, clock)

    def displacement_bps(self, symbol: str) -> Decimal:
        """How far ``symbol``'s price is displaced now, in bps (positive: pushed up by buys)."""
        return self._decayed(symbol, self._clock())

    def shifted(self, quote: Quote) -> Quote:
        """``quote`` as this broker shows it: both sides moved by the current displacement."""
        d = self.displacement_bps(quote.symbol)
        if not d:
            return quote
        factor = 1 + d / BPS
        return replace(quote, bid=_price(quote.bid * factor), ask=_price(quote.ask * factor))

    def available(  # noqa: PLR0917  (the order's figures, each a value)
        self, symbol: str, asset: AssetClass, side: Side, touch: Decimal, limit: Decimal, step: Decimal
    ) -> Decimal:
        """How much of ``symbol`` can be taken, in multiples of ``step``, before the marginal
        price crosses ``limit`` (a buy's ceiling, a sell's floor). ``touch`` is the ask for a
        buy and the bid for a sell, before displacement. Zero for a limit at or behind the
        displaced touch: the book holds nothing at a better price than that."""
        d = self.displacement_bps(symbol)
        room_bps = (limit / touch - 1) * BPS - d
        if side is Side.SELL:
            room_bps = -room_bps
        if room_bps <= 0:
            return Decimal(0)
        return (room_bps * self._depth(symbol, asset)).quantize(step, ROUND_DOWN)

    def average_price(self, symbol: str, asset: AssetClass, side: Side, touch: Decimal, quantity: Decimal) -> Decimal:
        """What taking ``quantity`` now would pay on average (nothing changes)."""
        return self._price_of(symbol, asset, side, touch, quantity, self.displacement_bps(symbol))[0]

    def take(self, symbol: str, asset: AssetClass, side: Side, touch: Decimal, quantity: Decimal) -> Take:
        """Take ``quantity`` from the book: its average price, and the displacement it leaves."""
        now = self._clock()
        d = self._decayed(symbol, now)
        price, walk = self._price_of(symbol, asset, side, touch, quantity, d)
        self._settle(symbol, d + walk, now)
        return Take(symbol, quantity, price, walk, now)

    def give_back(self, take: Take) -> None:
        """Undo ``take`` (the broker turned out to hold the order already, so nothing traded).
        The displacement is a sum of walks that each decay alike, so the undo is exact."""
        now = self._clock()
        left = take.walk_bps * _decay(now - take.at, self.recovery_s)
        self._settle(take.symbol, self._decayed(take.symbol, now) - left, now)

    def _price_of(  # noqa: PLR0917  (the order's figures, each a value)
        self, symbol: str, asset: AssetClass, side: Side, touch: Decimal, quantity: Decimal, d: Decimal
    ) -> tuple[Decimal, Decimal]:
        walk = quantity / self._depth(symbol, asset)
        signed = walk if side is Side.BUY else -walk
        average = touch * (1 + (d + signed / TWO) / BPS)
        # A linear book is meant for moves well under 100%; a sale never fills at zero or less.
        return max(_price(average), PRICE_STEP), signed

    def _decayed(self, symbol: str, now: float) -> Decimal:
        held = self._displaced.get(symbol)
        if held is None:
            return Decimal(0)
        bps, at = held
        return bps * _decay(now - at, self.recovery_s)

    def _settle(self, symbol: str, bps: Decimal, now: float) -> None:
        if abs(bps) < SETTLED_BPS:
            self._displaced.pop(symbol, None)
        else:
            self._displaced[symbol] = (bps, now)


def _decay(elapsed_s: float, half_life_s: float) -> Decimal:
    """The share of a displacement left after ``elapsed_s`` seconds."""
    if elapsed_s <= 0:
        return Decimal(1)
    return Decimal(repr(0.5 ** (elapsed_s / half_life_s)))


def _price(value: Decimal) -> Decimal:
    return value.quantize(PRICE_STEP, ROUND_HALF_UP)
