"""The messages mbx exchanges on NATS.

All messages are frozen pydantic models that reject unknown fields. Money and quantities are
``Decimal`` and travel as JSON strings (``"10.5"``), so no precision is lost between languages.
Every message carries ``message_id`` (the JetStream ``Nats-Msg-Id`` it is published with),
``correlation_id`` (the intent id it belongs to), a timezone-aware ``created_at`` and
``schema_version``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from contracts.enums import (
    ApprovalStep,
    AssetClass,
    BrokerName,
    DeadLetterStage,
    OrderStatus,
    OrderType,
    ParentStatus,
    PositionEffect,
    Side,
    TimeInForce,
)

SCHEMA_VERSION = 1
INTENT_ID_MAX_LENGTH = 48
"""Characters an intent id may have: the safe client order id limit at Alpaca."""

IntentId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=INTENT_ID_MAX_LENGTH,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
        description=(
            "Unique id of the order intent, chosen by the strategy. It is the JetStream "
            "deduplication key (Nats-Msg-Id) and the client order id at the broker, so reuse "
            "it only to retry the same order. At most 48 characters (the safe limit at Alpaca): "
            "letters, digits and _ . : -"
        ),
    ),
]
StrategyId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Id of the strategy service; one NATS subject token (letters, digits, _ and -).",
    ),
]
Symbol = Annotated[
    str,
    Field(
        min_length=1,
        max_length=32,
        pattern=r"^[A-Z0-9][A-Z0-9 ./_-]*$",
        description="Instrument symbol in upper case: AAPL, BRK.B, BTC-USD, or an OCC option symbol.",
    ),
]
PositiveDecimal = Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]
NonNegativeDecimal = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]

MAX_QUANTITY = 10**9
"""Quantities are below one billion units, with at most 9 decimals."""
MAX_NOTIONAL = 10**9
"""Dollar amounts are below one billion USD, with at most 2 decimals."""
MAX_PRICE = 10**7
"""Prices are below ten million USD, with at most 8 decimals."""
DEAD_LETTER_MAX_PAYLOAD = 256 * 1024
"""Characters of the original payload a dead letter carries (it must fit NATS' 1 MB limit)."""
METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_LENGTH = 64
METADATA_MAX_VALUE_LENGTH = 256
METADATA_MAX_TOTAL = 4096
"""Characters of all metadata keys and values together."""
QUANTITY_QUANTUM = Decimal("1e-9")
"""The finest quantity step the contract carries (9 decimals)."""
MAX_SPLIT_BROKERS = 5
"""A split spreads one slice over at most this many brokers (every broker mbx knows)."""
MIN_TWAP_DURATION_S = 10.0
"""A TWAP lasts at least this long: shorter, its slices would go out faster than brokers confirm them."""
MAX_TWAP_DURATION_S = 5 * 86400.0
"""A TWAP lasts at most five days."""
MIN_TWAP_SLICES = 2
MAX_SLICES = 1000
"""A parent has at most this many slices (TWAP slices or iceberg reloads): every slice is at least one
order at a broker, and broker rate budgets are a few hundred orders a minute."""
MIN_SLICE_INTERVAL_S = 1.0
"""TWAP slices are at least this far apart."""
MAX_JITTER_PCT = 50.0
"""Jitter moves a TWAP slice by at most half its interval, so slices never swap places."""


def _decimal_schema(upper: int, integer_digits: int, decimals: int, what: str) -> dict[str, Any]:
    """The JSON Schema of a bounded positive Decimal: a number, or a string of digits (what the
    model accepts), with the same bounds."""
    pattern = rf"^(?=.*[1-9])[0-9]{{1,{integer_digits}}}(\.[0-9]{{1,{decimals}}})?$"
    return {
        "anyOf": [
            {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": upper},
            {"type": "string", "pattern": pattern},
        ],
        "description": f"{what}: greater than 0, less than {upper:,}, at most {decimals} decimals; "
        "best sent as a string.",
    }


Quantity = Annotated[
    Decimal,
    Field(gt=0, lt=MAX_QUANTITY, decimal_places=9, allow_inf_nan=False),
    WithJsonSchema(_decimal_schema(MAX_QUANTITY, 9, 9, "Units")),
]
Notional = Annotated[
    Decimal,
    Field(gt=0, lt=MAX_NOTIONAL, decimal_places=2, allow_inf_nan=False),
    WithJsonSchema(_decimal_schema(MAX_NOTIONAL, 9, 2, "USD")),
]
Price = Annotated[
    Decimal,
    Field(gt=0, lt=MAX_PRICE, decimal_places=8, allow_inf_nan=False),
    WithJsonSchema(_decimal_schema(MAX_PRICE, 7, 8, "USD per unit")),
]
MetadataKey = Annotated[
    str, StringConstraints(min_length=1, max_length=METADATA_MAX_KEY_LENGTH, pattern=r"^[A-Za-z0-9_.:-]+$")
]
MetadataValue = Annotated[str, StringConstraints(max_length=METADATA_MAX_VALUE_LENGTH)]


def _new_message_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """Fields every mbx message carries."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    message_id: str = Field(
        default_factory=_new_message_id,
        min_length=1,
        max_length=200,
        description="Unique id of this message; published as the Nats-Msg-Id header.",
    )
    correlation_id: str = Field(
        default="",
        max_length=200,
        description="The intent id this message belongs to (empty for broker-wide messages).",
    )
    created_at: AwareDatetime = Field(
        default_factory=_now, description="When the message was created (timezone-aware, UTC)."
    )
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1, description="Wire schema version.")


_ALGORITHMS = ("split", "twap", "iceberg")


class SplitSpec(BaseModel):
    """Split each slice of a parent order across several brokers at once.

    The router's split rule sizes the children of a slice: eligible brokers only, each within its
    rate headroom, queue wait and ``max_broker_allocation`` (counting children still in flight),
    better-scoring brokers first. A sell that reduces a long held at several brokers (a buy that
    reduces a short) goes only to the brokers holding it, each at most what it holds. Give at most
    one of ``min_child_quantity`` and ``min_child_notional``: no child is smaller, so a slice is
    spread over fewer brokers when its shares would be; a slice smaller than the minimum goes
    whole to one broker.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={
            "not": {
                "required": ["min_child_quantity", "min_child_notional"],
                "properties": {
                    "min_child_quantity": {"not": {"type": "null"}},
                    "min_child_notional": {"not": {"type": "null"}},
                },
            }
        },
    )

    max_brokers: int = Field(
        default=MAX_SPLIT_BROKERS,
        ge=1,
        le=MAX_SPLIT_BROKERS,
        description=f"Most brokers one slice is spread over, 1 to {MAX_SPLIT_BROKERS}.",
    )
    min_child_quantity: Quantity | None = Field(default=None, description="Smallest child order, in units.")
    min_child_notional: Notional | None = Field(
        default=None, description="Smallest child order in USD, at the price the split is sized with."
    )

    @model_validator(mode="after")
    def _one_minimum(self) -> Self:
        if self.min_child_quantity is not None and self.min_child_notional is not None:
            raise ValueError("give at most one of min_child_quantity or min_child_notional")
        return self


class TwapSpec(BaseModel):
    """Send a parent order in ``slices`` equal slices evenly spaced over ``duration_s`` seconds.

    The first slice goes when the parent arrives, the others every ``duration_s / slices`` seconds,
    so the last one is due one interval before the end. Quantities are whole units for a whole
    equity or option quantity (the remainder spread one unit at a time, so the slices add up to
    the quantity exactly). ``jitter_pct`` moves each slice after the first by up to that percent
    of the interval, earlier or later, by an amount derived from the intent id (the same intent
    always gets the same times), so the schedule is harder to spot and slices never swap places.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    duration_s: float = Field(
        allow_inf_nan=False,
        description=f"Seconds from the first slice to the end, {MIN_TWAP_DURATION_S:g} to "
        f"{MAX_TWAP_DURATION_S:g} (five days).",
        json_schema_extra={"minimum": MIN_TWAP_DURATION_S, "maximum": MAX_TWAP_DURATION_S},
    )
    slices: int = Field(
        description=f"Number of slices, {MIN_TWAP_SLICES} to {MAX_SLICES}, at least {MIN_SLICE_INTERVAL_S:g} s apart.",
        json_schema_extra={"minimum": MIN_TWAP_SLICES, "maximum": MAX_SLICES},
    )
    jitter_pct: float = Field(
        default=0.0,
        ge=0,
        le=MAX_JITTER_PCT,
        allow_inf_nan=False,
        description=f"Random-looking shift of each slice, percent of the interval, 0 to {MAX_JITTER_PCT:g}.",
    )

    @field_validator("duration_s")
    @classmethod
    def _duration_in_bounds(cls, value: float) -> float:
        if value < MIN_TWAP_DURATION_S:
            raise ValueError(
                f"a TWAP lasts at least {MIN_TWAP_DURATION_S:g} s, got {value:g} s: slices sent faster than that "
                "would outrun the brokers' confirmations; send the order without twap instead"
            )
        if value > MAX_TWAP_DURATION_S:
            raise ValueError(f"a TWAP lasts at most {MAX_TWAP_DURATION_S:g} s (five days), got {value:g} s")
        return value

    @field_validator("slices")
    @classmethod
    def _slices_in_bounds(cls, value: int) -> int:
        if value < MIN_TWAP_SLICES:
            raise ValueError(f"a TWAP has at least {MIN_TWAP_SLICES} slices, got {value}")
        if value > MAX_SLICES:
            raise ValueError(
                f"a TWAP has at most {MAX_SLICES} slices, got {value}: every slice is an order at a broker, "
                "and brokers' rate budgets are a few hundred orders a minute; use fewer, larger slices"
            )
        return value

    @model_validator(mode="after")
    def _slices_apart(self) -> Self:
        interval = self.duration_s / self.slices
        if interval < MIN_SLICE_INTERVAL_S:
            raise ValueError(
                f"TWAP slices must be at least {MIN_SLICE_INTERVAL_S:g} s apart: {self.slices} slices over "
                f"{self.duration_s:g} s would be {interval:.3g} s apart"
            )
        return self


class IcebergSpec(BaseModel):
    """Show only ``display_quantity`` of a parent order at a time.

    The first slice goes when the parent arrives; each next slice (``display_quantity``, the last
    one the remainder) goes when the previous slice has ended, so at most ``display_quantity`` is
    working at once (across every broker, when combined with ``split``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    display_quantity: Quantity = Field(
        description="Units working at once; below the order's quantity, and a whole number when the quantity is a "
        f"whole equity or option quantity. The quantity may need at most {MAX_SLICES} slices of it."
    )


class Execution(BaseModel):
    """How mbx works a large order (a *parent*): split across brokers, sliced over time, or both.

    Give at least one block. ``twap`` and ``iceberg`` are the time algorithms and exclusive (one
    per parent); ``split`` combines with either (each slice is split across brokers) or stands
    alone (the whole order is split at once). A parent gives ``quantity``, not ``notional``, and
    no ``broker`` when it splits. mbx sends every child as an ordinary intent with an id derived
    from the parent's id and the slice, so a replay never makes a new child. The intent's
    ``limit_price``, ``order_type``, ``side`` and ``time_in_force`` apply to every child: the limit
    price caps every child. Progress is reported as ``ParentReport`` on
    ``mbx.exec.parent.<status>.<strategy>``. VWAP (slices sized by a volume curve) is not offered
    yet: it needs traded volumes from the market-data source.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        # The cross-field rules below, said in the JSON Schema too, so a client validating against
        # it is not refused later for them.
        json_schema_extra={
            "anyOf": [{"required": [name], "properties": {name: {"type": "object"}}} for name in _ALGORITHMS],
            "not": {
                "required": ["twap", "iceberg"],
                "properties": {"twap": {"type": "object"}, "iceberg": {"type": "object"}},
            },
        },
    )

    split: SplitSpec | None = Field(default=None, description="Split each slice across brokers.")
    twap: TwapSpec | None = Field(default=None, description="Equal slices evenly spaced over a duration.")
    iceberg: IcebergSpec | None = Field(default=None, description="Show only part of the order at a time.")

    @model_validator(mode="after")
    def _one_algorithm(self) -> Self:
        if self.split is None and self.twap is None and self.iceberg is None:
            raise ValueError("an execution block needs at least one of split, twap or iceberg")
        if self.twap is not None and self.iceberg is not None:
            raise ValueError(
                "give twap or iceberg, not both: a parent follows one time algorithm (add split to either)"
            )
        return self


class OrderIntent(Message):
    """An order a strategy wants executed; mbx picks the broker.

    Publish it to ``mbx.orders.intent.<strategy_id>`` with header ``Nats-Msg-Id: <intent_id>``.
    Give either ``quantity`` (fractional allowed) or ``notional`` (a dollar amount), not both.
    ``limit_price`` is required for limit and stop_limit orders, ``stop_price`` for stop and
    stop_limit orders. ``message_id`` and ``correlation_id`` default to ``intent_id``.
    """

    intent_id: IntentId
    strategy_id: StrategyId
    symbol: Symbol
    asset_class: AssetClass = Field(description="equity, crypto or option.")
    side: Side = Field(description="buy or sell.")
    quantity: Quantity | None = Field(
        default=None, description="Units to trade; fractional quantities are allowed (at most 9 decimals)."
    )
    notional: Notional | None = Field(default=None, description="Dollar amount to trade instead of a quantity.")
    order_type: OrderType = Field(default=OrderType.MARKET, description="market, limit, stop or stop_limit.")
    limit_price: Price | None = Field(default=None, description="Limit price (limit, stop_limit).")
    stop_price: Price | None = Field(default=None, description="Stop trigger price (stop, stop_limit).")
    time_in_force: TimeInForce = Field(
        default=TimeInForce.DAY, description="day, gtc, ioc or fok; defaults to day (gtc for crypto)."
    )
    broker: BrokerName | None = Field(
        default=None, description="Preferred broker; honoured when it is enabled and eligible."
    )
    position_effect: PositionEffect | None = Field(
        default=None,
        description="What the order may do to a position. Empty (the default): a sell of a held long, or a buy "
        "of a held short, goes to the broker that holds it and is refused when no holder has enough; a sell "
        "of a symbol held nowhere opens a short only at a broker whose config allows shorting. `open`: the "
        "order may open a position (a short sale) at any broker whose account allows it. `close`: the order "
        "must only reduce a held position, else it is refused. Added in 1 without a version change: optional.",
    )
    execution: Execution | None = Field(
        default=None,
        description="Work the order as a parent: split across brokers (split), sliced over time (twap, iceberg), or "
        "both. Needs quantity, not notional; limit_price caps every child. Empty (the default): one order at one "
        "broker. Added in 1 without a version change: optional.",
    )
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=METADATA_MAX_KEYS,
        description=f"Free-form tags kept with the order: at most {METADATA_MAX_KEYS} keys of at most "
        f"{METADATA_MAX_KEY_LENGTH} characters (letters, digits, _ . : -), values of at most "
        f"{METADATA_MAX_VALUE_LENGTH} characters, {METADATA_MAX_TOTAL} characters in all.",
        json_schema_extra={"additionalProperties": False},
    )

    @model_validator(mode="before")
    @classmethod
    def _ids_default_to_intent_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("intent_id"):
            data = dict(data)
            data.setdefault("message_id", data["intent_id"])
            data.setdefault("correlation_id", data["intent_id"])
            if data.get("asset_class") == AssetClass.CRYPTO and data.get("time_in_force") is None:
                # Crypto trades around the clock and its venues have no "day" orders.
                data["time_in_force"] = TimeInForce.GTC
        return data

    @model_validator(mode="after")
    def _check_order_shape(self) -> Self:
        size = sum(len(k) + len(v) for k, v in self.metadata.items())
        if size > METADATA_MAX_TOTAL:
            raise ValueError(f"metadata holds {size} characters; at most {METADATA_MAX_TOTAL} are allowed")
        if (self.quantity is None) == (self.notional is None):
            raise ValueError("give exactly one of quantity or notional")
        needs_limit = self.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
        needs_stop = self.order_type in (OrderType.STOP, OrderType.STOP_LIMIT)
        if needs_limit and self.limit_price is None:
            raise ValueError(f"limit_price is required for {self.order_type} orders")
        if not needs_limit and self.limit_price is not None:
            raise ValueError(f"limit_price is not allowed for {self.order_type} orders")
        if needs_stop and self.stop_price is None:
            raise ValueError(f"stop_price is required for {self.order_type} orders")
        if not needs_stop and self.stop_price is not None:
            raise ValueError(f"stop_price is not allowed for {self.order_type} orders")
        return self

    @model_validator(mode="after")
    def _check_execution(self) -> Self:
        execution = self.execution
        if execution is None:
            return self
        if self.quantity is None:
            raise ValueError(
                "an order with an execution block gives quantity, not notional: its slices are sized in units"
            )
        if execution.split is not None and self.broker is not None:
            raise ValueError("an order with a split chooses its brokers: give broker or split, not both")
        step = self.quantity_step
        units = self.quantity / step
        if execution.twap is not None and units < execution.twap.slices:
            raise ValueError(
                f"a TWAP of {execution.twap.slices} slices needs a quantity of at least "
                f"{execution.twap.slices * step:f} ({step:f} a slice); the quantity is {self.quantity}"
            )
        if execution.iceberg is not None:
            display = execution.iceberg.display_quantity
            if display >= self.quantity:
                raise ValueError(
                    f"iceberg display_quantity {display} must be below the quantity {self.quantity}: an iceberg shows "
                    "part of the order"
                )
            if display % step:
                raise ValueError(
                    f"iceberg display_quantity {display} must be a whole number for a whole equity or option quantity"
                )
            reloads = -(-self.quantity // display)
            if reloads > MAX_SLICES:
                raise ValueError(
                    f"an iceberg of {self.quantity} showing {display} takes {reloads} slices; at most {MAX_SLICES} "
                    "are allowed: show more at a time"
                )
        return self

    @property
    def quantity_step(self) -> Decimal:
        """The unit a parent order's children are sized in: one whole unit for a whole equity or
        option quantity (so every child can go to a broker without fractional shares), else the
        contract's precision, 1e-9."""
        if (
            self.quantity is not None
            and self.asset_class is not AssetClass.CRYPTO
            and self.quantity == self.quantity.to_integral_value()
        ):
            return Decimal(1)
        return QUANTITY_QUANTUM

    @property
    def is_fractional(self) -> bool:
        """True for a dollar-amount order or a quantity that is not a whole number."""
        if self.notional is not None:
            return True
        assert self.quantity is not None
        return self.quantity != self.quantity.to_integral_value()


class CancelRequest(Message):
    """Ask mbx to cancel a working order. Publish to ``mbx.orders.cancel.<strategy_id>``."""

    intent_id: IntentId
    strategy_id: StrategyId
    reason: str = Field(default="", max_length=500, description="Why the strategy cancels.")


class CandidateScore(BaseModel):
    """How one eligible broker scored for an intent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    broker: BrokerName
    estimated_fee: NonNegativeDecimal = Field(description="Estimated total fee in USD.")
    expected_latency_ms: float = Field(
        ge=0, description="Expected time to fill, milliseconds, including expected_wait_ms."
    )
    expected_wait_ms: float = Field(
        default=0.0,
        ge=0,
        description="Expected wait for the broker's rate budget behind the orders already queued there, milliseconds.",
    )
    fill_score: float = Field(ge=0, le=1, description="Measured fill quality, 0 (worst) to 1 (best).")
    cost_score: float = Field(ge=0, le=1, description="1 - normalised fee.")
    speed_score: float = Field(ge=0, le=1, description="1 - normalised latency.")
    total: float = Field(ge=0, le=1, description="Weighted sum of the component scores.")
    buying_power: Decimal | None = Field(
        default=None,
        description="Buying power in USD the router counted at this broker: the account's last figure less the "
        "orders in flight there. Empty when no account figure is known yet (the broker was not checked for "
        "cash). Added in 1 without a version change: optional.",
    )


class ExcludedBroker(BaseModel):
    """A broker that was not eligible for an intent, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    broker: BrokerName
    reason_code: str = Field(description="Machine-readable reason, e.g. disabled, unsupported_asset.")
    reason: str = Field(description="Human-readable explanation.")


class ReferenceQuote(BaseModel):
    """The quote the router priced an order with, as it saw it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(description="Where the quote came from (market_data.source), e.g. simulated or alpaca.")
    bid: NonNegativeDecimal
    ask: NonNegativeDecimal
    mid: NonNegativeDecimal
    at: AwareDatetime = Field(description="When the source says the quote was taken.")
    age_ms: float = Field(ge=0, description="Age of the quote when the router decided, milliseconds.")


class RouteDecision(Message):
    """Where the router sent an intent, and why. Published to ``mbx.routes.<broker>.<strategy>``."""

    intent_id: IntentId
    strategy_id: StrategyId
    broker: BrokerName = Field(description="The broker that will execute this attempt.")
    attempt: int = Field(default=1, ge=1, description="1 for the first route, +1 per failover.")
    intent: OrderIntent = Field(description="The intent being routed, as received.")
    rule: str = Field(description="The rule that decided the broker, e.g. default:equity.")
    reason: str = Field(description="Why this broker was chosen, in words.")
    candidates: tuple[CandidateScore, ...] = Field(
        default=(), description="Every eligible broker with its score breakdown, best first."
    )
    excluded: tuple[ExcludedBroker, ...] = Field(
        default=(), description="Every broker that was not eligible, with the reason."
    )
    fallback_chain: tuple[BrokerName, ...] = Field(
        default=(), description="Brokers to try next, in order, if this one fails."
    )
    failover_from: BrokerName | None = Field(
        default=None, description="The broker that failed before this attempt, if any."
    )
    reference_price: NonNegativeDecimal | None = Field(
        default=None,
        description="The quote's mid price the router decided with (slippage is measured against it); "
        "empty when no fresh quote was available.",
    )
    quote: ReferenceQuote | None = Field(
        default=None,
        description="The quote the router got for the symbol, with its source and age; recorded even when it "
        "was too old to use (then reference_price is empty and the reason says so).",
    )
    failed_brokers: tuple[BrokerName, ...] = Field(
        default=(), description="Every broker that already failed this intent, in order."
    )
    config_version: int = Field(default=0, ge=0, description="Version of the routing config used.")
    closes_position: Decimal | None = Field(
        default=None,
        description="When the order reduces a position: the signed quantity of the symbol the chosen broker "
        "held (less orders in flight) that it closes from, long > 0. Empty when it opens or adds to one. "
        "Added in 1 without a version change: optional.",
    )


class ExecutionReport(Message):
    """The state of an order at a broker. Published to ``mbx.exec.<broker>.<status>.<strategy>``.

    ``broker`` is empty when the router rejected the intent before choosing one; such reports
    go to ``mbx.exec.unrouted.rejected``. ``report_seq`` increases with every report for the
    same order, so consumers can ignore a stale report that arrives late.
    """

    intent_id: IntentId
    strategy_id: StrategyId
    broker: BrokerName | None
    status: OrderStatus
    attempt: int = Field(default=1, ge=1)
    report_seq: int = Field(default=1, ge=0, description="Per-order report sequence number.")
    client_order_id: str = Field(default="", description="Id mbx gave the broker (the intent id).")
    broker_order_id: str = Field(default="", description="The broker's own order id.")
    symbol: Symbol
    asset_class: AssetClass
    side: Side
    order_type: OrderType = OrderType.MARKET
    quantity: NonNegativeDecimal | None = None
    notional: NonNegativeDecimal | None = None
    filled_quantity: NonNegativeDecimal = Decimal(0)
    leaves_quantity: NonNegativeDecimal = Decimal(0)
    average_price: NonNegativeDecimal | None = None
    fees: NonNegativeDecimal = Decimal(0)
    reason_code: str = Field(default="", description="Machine-readable reason for a rejection or failure.")
    reason: str = Field(default="", description="Human-readable reason.")
    first_fill_at: AwareDatetime | None = Field(
        default=None, description="When the broker first filled this order; null before any fill."
    )
    final: bool = Field(
        default=False,
        description=(
            "True on the report that ends the intent: a terminal status after which no other "
            "attempt will follow (a rejection that fails over to another broker is not final)."
        ),
    )


class ChildOrder(BaseModel):
    """One child of a parent order: an ordinary intent the router routes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    intent_id: IntentId
    broker: BrokerName | None = Field(
        default=None, description="The broker the child was split to or routed to; empty until one is known."
    )
    slice_number: int = Field(ge=0, lt=MAX_SLICES, description="The slice the child belongs to, from 0.")
    quantity: Quantity
    filled_quantity: NonNegativeDecimal = Decimal(0)
    status: str = Field(
        max_length=32, description="The child's order status (an OrderStatus), or `planned` before it is sent."
    )


class ParentReport(Message):
    """The state of a parent order (an intent with an ``execution`` block) across its children.

    Published to ``mbx.exec.parent.<status>.<strategy>`` whenever the parent's state changes.
    ``intent_id`` is the parent's; each child has its own routes and execution reports under its
    own intent id. ``slippage_bps`` compares the average fill price with ``arrival_price`` (the
    reference quote's mid when the parent arrived): positive is worse (a buy paid more, a sell
    received less). ``report_seq`` increases with every report for the parent; ``final`` is true on
    the report that ends it.
    """

    intent_id: IntentId = Field(description="The parent intent's id.")
    strategy_id: StrategyId
    symbol: Symbol
    side: Side
    status: ParentStatus
    quantity: Quantity = Field(description="The parent's quantity.")
    execution: Execution | None = Field(
        default=None, description="The parent's algorithm as it asked for it (split, twap, iceberg)."
    )
    filled_quantity: NonNegativeDecimal = Field(default=Decimal(0), description="Filled over every child.")
    average_price: NonNegativeDecimal | None = Field(
        default=None, description="Quantity-weighted average fill price over every child; empty before a fill."
    )
    arrival_price: NonNegativeDecimal | None = Field(
        default=None, description="The reference mid price when the parent arrived; empty without a fresh quote."
    )
    slippage_bps: float | None = Field(
        default=None, description="Average price against the arrival price, basis points; > 0 worse."
    )
    children: tuple[ChildOrder, ...] = Field(
        default=(),
        max_length=MAX_SLICES * MAX_SPLIT_BROKERS,
        description="Every child planned or sent so far, by slice.",
    )
    reason: str = Field(default="", max_length=500, description="Why the parent was cancelled or fell short.")
    report_seq: int = Field(default=1, ge=0, description="Per-parent report sequence number.")
    final: bool = Field(default=False, description="True on the report that ends the parent.")


class CancelReject(Message):
    """A cancel request that could not be carried out, and why (FIX's OrderCancelReject).

    Published to ``mbx.exec.<broker>.cancel_rejected.<strategy>`` (``unrouted`` when no broker holds the
    intent). ``reason_code`` is ``unknown_order`` (mbx has no order for this intent: never
    routed, or not placed yet), ``too_late_to_cancel`` (the order already reached
    ``order_status``, a terminal state), ``not_your_order`` (the intent belongs to another
    strategy) or ``wrong_strategy`` (the request's ``strategy_id`` is not the strategy of the
    subject it was sent on: a strategy cancels only as itself, and this answer goes to the
    subject's strategy). The order itself is unchanged.
    """

    intent_id: IntentId
    strategy_id: StrategyId
    broker: BrokerName | None
    reason_code: str
    reason: str
    order_status: OrderStatus | None = Field(default=None, description="The order's status, when it exists.")


class IntentRefused(Message):
    """An intent refused before routing because of who sent it, told to its sender only.

    Published to ``mbx.exec.unrouted.refused.<strategy>``, where ``<strategy>`` is the strategy
    of the subject the intent arrived on (its sender, as ``strategy_id`` here). ``reason_code``
    is ``wrong_strategy``: the intent's body names another strategy (``claimed_strategy_id``),
    and a strategy sends only as itself. It is not the state of any order: the audit store does
    not record it against ``intent_id`` (the id is the sender's choice and may name another
    strategy's order), and the intent is also dead-lettered for operators.
    """

    intent_id: IntentId
    strategy_id: StrategyId = Field(description="The sender: the strategy of the subject the intent came on.")
    claimed_strategy_id: str = Field(max_length=200, description="The strategy the intent's body named.")
    reason_code: str
    reason: str


class ApprovalEvent(Message):
    """A step of an order held for an operator's approval (config ``approvals``).

    Published by the router to ``mbx.approvals.<step>`` for operators (``pending`` when the order
    is held, then ``approved`` per approval, ``denied``, ``expired`` or ``released``), and the
    ``pending`` step also to the strategy's own results on ``mbx.exec.unrouted.pending_approval.<strategy>``.
    An approved order is routed as any other (its route decision and reports follow); a denied or
    expired one ends with a ``rejected`` execution report (``approval_denied``, ``approval_expired``).
    ``message_id`` is ``approval-<intent_id>-<step_no>``: one per step, whatever is sent again.
    """

    intent_id: IntentId
    strategy_id: StrategyId
    step: ApprovalStep
    step_no: int = Field(ge=0, description="0 for pending, then 1, 2, ... in the order the steps happened.")
    rule: str = Field(max_length=100, description="The approval rule that holds the order.")
    approvers_needed: int = Field(ge=1, le=2)
    approvals_given: int = Field(ge=0, le=2)
    operator: str = Field(default="", max_length=100, description="Who approved or denied (empty: the router).")
    note: str = Field(default="", max_length=1000)
    expires_at: AwareDatetime = Field(description="When the order ends rejected if not decided.")
    estimated_notional: Decimal | None = Field(
        default=None, description="USD at the quote when it was held (None: no quote)."
    )
    intent: OrderIntent


class Fill(Message):
    """One execution of (part of) an order. Published to ``mbx.fills.<broker>.<symbol>.<strategy>``."""

    fill_id: str = Field(min_length=1, max_length=200)
    intent_id: IntentId
    strategy_id: StrategyId
    broker: BrokerName
    broker_order_id: str
    symbol: Symbol
    asset_class: AssetClass
    side: Side
    quantity: PositiveDecimal
    price: PositiveDecimal
    fee: NonNegativeDecimal = Decimal(0)
    executed_at: AwareDatetime = Field(default_factory=_now)


class FailoverEvent(Message):
    """An attempt failed in a way that another broker may succeed. Published to
    ``mbx.failover.<broker>`` (the failed broker); the router issues the next attempt."""

    intent_id: IntentId
    strategy_id: StrategyId
    failed_broker: BrokerName
    attempt: int = Field(ge=1, description="The attempt that failed.")
    reason_code: str
    reason: str
    decision: RouteDecision = Field(description="The decision that failed, with its fallback chain.")


class AccountSnapshot(BaseModel):
    """Account values at one broker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    account_id: str
    currency: str = "USD"
    cash: Decimal
    buying_power: Decimal
    portfolio_value: Decimal


class PositionLine(BaseModel):
    """One position at one broker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    symbol: Symbol
    asset_class: AssetClass
    quantity: Decimal
    average_cost: NonNegativeDecimal
    market_price: NonNegativeDecimal
    market_value: Decimal
    unrealized_pnl: Decimal


class PositionSnapshot(Message):
    """Account and positions at one broker. Published to ``mbx.positions.<broker>``."""

    broker: BrokerName
    account: AccountSnapshot
    positions: tuple[PositionLine, ...] = ()


class BrokerStatus(Message):
    """Health of one broker as seen by its executor. Published to ``mbx.status.<broker>``."""

    broker: BrokerName
    connected: bool
    latency_ms: float = Field(ge=0, description="Recent latency (EWMA), milliseconds.")
    error_rate: float = Field(ge=0, le=1, description="Share of recent requests that failed.")
    rate_limit_headroom: float = Field(ge=0, le=1, description="Share of the rate budget left.")
    last_seen: AwareDatetime = Field(default_factory=_now)
    reason: str = Field(
        default="",
        max_length=500,
        description="Why the broker is down, in words an operator can act on (empty when it is up).",
    )
    warning: str = Field(
        default="",
        max_length=500,
        description="What an operator should act on soon while the broker is still up, such as a login "
        "about to end (empty when there is nothing). Added in 1 without a version change: optional.",
    )


class DeadLetter(Message):
    """A message a worker could not process, kept for inspection and replay.
    Published to ``mbx.dlq.<stage>``."""

    stage: DeadLetterStage
    original_subject: str
    original_headers: dict[str, str] = Field(default_factory=dict)
    payload: str = Field(
        description="The original payload once: as text when it was valid UTF-8, else base64 (payload_encoding); "
        f"cut to {DEAD_LETTER_MAX_PAYLOAD:,} characters when longer (payload_truncated)."
    )
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    payload_size: int = Field(default=0, ge=0, description="Bytes of the original payload.")
    payload_sha256: str = Field(default="", description="SHA-256 of the original payload bytes, hex.")
    payload_truncated: bool = Field(default=False, description="True when payload holds only the beginning.")
    error: str = Field(description="Why the message was dead-lettered.")
    delivery_count: int = Field(ge=0)
    stream_sequence: int | None = None


class RoutePreview(Message):
    """Reply to a route preview request on ``mbx.api.route.preview`` (the request body is an
    OrderIntent). Nothing is published or placed. Exactly one of ``decision``, ``rejection_code``
    or ``error`` is set."""

    decision: RouteDecision | None = None
    rejection_code: str = Field(default="", description="Why no broker would take the intent.")
    rejection_reason: str = ""
    excluded: tuple[ExcludedBroker, ...] = ()
    error: str = Field(default="", description="The request was not a valid OrderIntent.")


class ExposureSnapshot(Message):
    """Cross-broker exposure in USD, including in-flight orders, as the router's risk checks see
    it. Kept in the exposure KV bucket under key ``current``."""

    portfolio_value: NonNegativeDecimal = Field(description="Total value of every broker account.")
    by_broker: dict[BrokerName, Decimal] = Field(default_factory=dict, description="Gross exposure per broker.")
    by_symbol: dict[str, Decimal] = Field(
        default_factory=dict, description="Net signed exposure per symbol across brokers (long > 0)."
    )
    positions: dict[str, Decimal] = Field(default_factory=dict, description="Net quantity per symbol.")
    buying_power: dict[BrokerName, Decimal] = Field(
        default_factory=dict,
        description="Per broker with a known account: its last reported buying power in USD, less the buys "
        "filled since that report and the working orders' remaining value. Added in 1 without a version "
        "change: optional.",
    )
    holdings: dict[BrokerName, dict[str, Decimal]] = Field(
        default_factory=dict,
        description="Per broker, net quantity held per symbol (long > 0) from mbx's own fills, less what its "
        "working orders already close. Added in 1 without a version change: optional.",
    )


class FillQuality(Message):
    """Measured execution quality of one broker, as the router scores it. Kept in the
    fill-quality KV bucket under the broker's name; the router uses it once ``samples`` reaches
    its configured minimum and a prior until then."""

    broker: BrokerName
    fill_score: float = Field(ge=0, le=1, description="0 (worst) to 1 (best).")
    samples: int = Field(ge=0, description="Orders the score is measured over.")
    fill_rate: float | None = Field(default=None, ge=0, le=1, description="Share of orders filled.")
    reject_rate: float | None = Field(default=None, ge=0, le=1, description="Share rejected or failed.")
    avg_slippage_bps: float | None = Field(default=None, description="Against the decision-time price; > 0 worse.")
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    fees_paid: Decimal | None = None


class PortfolioPosition(BaseModel):
    """One symbol across every broker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    symbol: Symbol
    asset_class: AssetClass
    quantity: Decimal = Field(description="Net quantity, all brokers (short < 0).")
    average_cost: Decimal | None = Field(description="Quantity-weighted average cost of the net position.")
    market_price: Decimal | None = Field(description="Latest mark from the brokers' snapshots.")
    market_value: Decimal
    unrealized_pnl: Decimal
    realized_pnl: Decimal = Field(description="Closed P&L from mbx's own fills (average-cost method), net of fees.")
    by_broker: dict[BrokerName, Decimal] = Field(description="Quantity per broker.")


class Portfolio(Message):
    """The unified portfolio: reply on ``mbx.api.portfolio.unified``."""

    positions: tuple[PortfolioPosition, ...] = ()
    cash: Decimal = Decimal(0)
    market_value: Decimal = Decimal(0)
    portfolio_value: Decimal = Decimal(0)
    unrealized_pnl: Decimal = Decimal(0)
    realized_pnl: Decimal = Decimal(0)
    allocation: dict[BrokerName, Decimal] = Field(
        default_factory=dict, description="Percent of total portfolio value per broker (sums to 100)."
    )
    as_of: AwareDatetime | None = Field(default=None, description="The oldest broker snapshot it is built from.")


class SymbolExposure(Message):
    """One symbol's exposure per broker in USD, positions plus in-flight orders: reply on
    ``mbx.api.portfolio.exposure``."""

    symbol: Symbol
    positions: dict[BrokerName, Decimal] = Field(default_factory=dict, description="Signed market value held.")
    in_flight: dict[BrokerName, Decimal] = Field(default_factory=dict, description="Signed value of working orders.")
    net: Decimal = Decimal(0)
    gross: Decimal = Decimal(0)
