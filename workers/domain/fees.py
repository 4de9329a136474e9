"""Fee schedules as data: what each broker charges per asset class, plus US regulatory fees.

The router estimates fees with these to score brokers, and the simulated brokers charge them.
Every number is a default from ../shared/reference/broker-apis.md (entry tiers, as of 2026) and
can be overridden in the YAML config under ``routing.fees`` and ``routing.regulatory``: rates
change, so they are data, not code.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from pydantic import BaseModel, ConfigDict, Field

from contracts import AssetClass, BrokerName, OrderIntent, Side

CENT = Decimal("0.01")
OPTION_MULTIPLIER = Decimal(100)
ZERO = Decimal(0)
ONE = Decimal(1)


class VolumeTier(BaseModel):
    """A percentage rate that applies from a 30-day traded volume (USD) upwards."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_volume: Decimal = Field(ge=0)
    percent: Decimal = Field(ge=0, le=1, description="Fraction of traded value, 0.012 = 1.2%.")


class FeeSchedule(BaseModel):
    """How one broker charges for one asset class. Components add up; then min and cap apply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_share: Decimal = Field(default=ZERO, ge=0, description="USD per share (equity).")
    per_contract: Decimal = Field(default=ZERO, ge=0, description="USD per option contract.")
    percent: Decimal = Field(default=ZERO, ge=0, le=1, description="Taker rate, fraction of value.")
    tiers: tuple[VolumeTier, ...] = Field(default=(), description="Volume tiers replacing `percent`.")
    spread_bps: Decimal = Field(default=ZERO, ge=0, description="Implicit cost of spread-based pricing.")
    minimum: Decimal = Field(default=ZERO, ge=0, description="Per-order minimum when any commission applies.")
    max_percent_of_value: Decimal | None = Field(default=None, ge=0, le=1, description="Cap, fraction of value.")

    def rate(self, volume_30d: Decimal) -> Decimal:
        applicable = [t for t in self.tiers if t.min_volume <= volume_30d]
        return max(applicable, key=lambda t: t.min_volume).percent if applicable else self.percent


class RegulatoryFees(BaseModel):
    """US pass-through fees on equities and options (crypto has none)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sec_per_million: Decimal = Field(default=ZERO, ge=0, description="SEC Section 31, USD per $1M sold.")
    taf_per_share: Decimal = Field(default=Decimal("0.000195"), ge=0, description="FINRA TAF on shares sold.")
    taf_cap: Decimal = Field(default=Decimal("9.79"), ge=0)
    taf_per_contract: Decimal = Field(default=Decimal("0.00329"), ge=0, description="FINRA TAF on contracts sold.")
    orf_per_contract: Decimal = Field(default=Decimal("0.02685"), ge=0, description="Options regulatory fee.")
    occ_per_contract: Decimal = Field(default=Decimal("0.02"), ge=0, description="OCC clearing fee.")
    occ_cap: Decimal = Field(default=Decimal(55), ge=0)

    @staticmethod
    def apply_to(asset: AssetClass, side: Side) -> bool:
        """Whether any of these fees can be due on such an order (sells, and options either way)."""
        return asset is not AssetClass.CRYPTO and (side is Side.SELL or asset is AssetClass.OPTION)

    def estimate(self, asset: AssetClass, side: Side, quantity: Decimal, value: Decimal) -> Decimal:
        if not self.apply_to(asset, side):
            return ZERO
        fee = ZERO
        if side is Side.SELL:
            fee += value * self.sec_per_million / Decimal(1_000_000)
            if asset is AssetClass.EQUITY:
                fee += min(quantity * self.taf_per_share, self.taf_cap)
            else:
                fee += quantity * self.taf_per_contract
        if asset is AssetClass.OPTION:
            fee += quantity * self.orf_per_contract + min(quantity * self.occ_per_contract, self.occ_cap)
        return fee


def _s(**kwargs: object) -> FeeSchedule:
    return FeeSchedule.model_validate(kwargs)


DEFAULT_FEES: dict[BrokerName, dict[AssetClass, FeeSchedule]] = {
    BrokerName.ALPACA: {
        AssetClass.EQUITY: _s(),
        AssetClass.OPTION: _s(),
        # 0.25% taker below $100K of 30-day volume, 0.10% above $100M (intermediate tiers: config).
        AssetClass.CRYPTO: _s(
            percent="0.0025",
            tiers=[{"min_volume": 0, "percent": "0.0025"}, {"min_volume": 100_000_000, "percent": "0.0010"}],
        ),
    },
    BrokerName.ROBINHOOD: {
        AssetClass.EQUITY: _s(),
        AssetClass.OPTION: _s(),
        # Spread-based and unpublished; 0.85% (the top smart-routing tier) is a conservative estimate.
        AssetClass.CRYPTO: _s(spread_bps=85),
    },
    BrokerName.COINBASE: {
        AssetClass.CRYPTO: _s(
            percent="0.012",
            tiers=[
                {"min_volume": 0, "percent": "0.012"},
                {"min_volume": 1000, "percent": "0.0075"},
                {"min_volume": 10000, "percent": "0.0040"},
            ],
        ),
    },
    BrokerName.SCHWAB: {
        AssetClass.EQUITY: _s(),
        AssetClass.OPTION: _s(per_contract="0.65"),
    },
    BrokerName.IBKR: {
        AssetClass.EQUITY: _s(per_share="0.005", minimum=1, max_percent_of_value="0.01"),  # IBKR Pro Fixed
        AssetClass.OPTION: _s(per_contract="0.65", minimum=1),
        AssetClass.CRYPTO: _s(percent="0.0018", minimum="1.75", max_percent_of_value="0.01"),
    },
}


def traded_value(asset: AssetClass, quantity: Decimal, price: Decimal) -> Decimal:
    return quantity * price * (OPTION_MULTIPLIER if asset is AssetClass.OPTION else 1)


def order_size(intent: OrderIntent, price: Decimal | None) -> tuple[Decimal | None, Decimal | None]:
    """(quantity, notional in USD) as far as the price allows."""
    if intent.quantity is not None:
        value = traded_value(intent.asset_class, intent.quantity, price) if price else None
        return intent.quantity, value
    assert intent.notional is not None
    return (intent.notional / price if price else None), intent.notional


@dataclass(frozen=True, slots=True)
class FeeModel:
    """One schedule applied to one asset class with its volume tier resolved: the commission
    arithmetic, ready for many orders without re-reading the schedule each time."""

    asset: AssetClass
    per_unit: Decimal
    """Per share for equities, per contract for options, nothing for crypto."""
    percent: Decimal
    """Taker rate plus the spread, as a fraction of traded value."""
    minimum: Decimal
    cap: Decimal | None
    multiplier: Decimal

    @classmethod
    def of(cls, schedule: FeeSchedule, asset: AssetClass, volume_30d: Decimal = ZERO) -> FeeModel:
        per_unit = {AssetClass.EQUITY: schedule.per_share, AssetClass.OPTION: schedule.per_contract}.get(asset, ZERO)
        return cls(
            asset=asset,
            per_unit=per_unit,
            percent=schedule.rate(volume_30d) + schedule.spread_bps / Decimal(10_000),
            minimum=schedule.minimum,
            cap=schedule.max_percent_of_value,
            multiplier=OPTION_MULTIPLIER if asset is AssetClass.OPTION else ONE,
        )

    @property
    def free(self) -> bool:
        """Commission-free: nothing to charge whatever the order."""
        return not (self.per_unit or self.percent or self.minimum)

    def commission(self, quantity: Decimal, price: Decimal) -> Decimal:
        if self.free:
            return ZERO
        value = quantity * price * self.multiplier
        fee = quantity * self.per_unit + value * self.percent
        if fee > 0 and fee < self.minimum:
            fee = self.minimum
        if self.cap is not None:
            fee = min(fee, value * self.cap)
        return fee


def commission(
    schedule: FeeSchedule, asset: AssetClass, quantity: Decimal, price: Decimal, volume_30d: Decimal = ZERO
) -> Decimal:
    """The broker's own charge for one order of ``quantity`` at ``price``."""
    return FeeModel.of(schedule, asset, volume_30d).commission(quantity, price)


def round_up_to_cent(amount: Decimal) -> Decimal:
    """Brokers round fees up to the cent."""
    return amount.quantize(CENT, ROUND_CEILING)
