"""The trading config: brokers, risk limits and routing, in the shape of the YAML file.

Pure data and validation (pydantic and the standard library): the router, the executors, the
CLI and the dashboard share it, and the live copy in KV is this model as JSON. Reading the file
is the platform's job (``workers.platform.settings.load_config``).
"""

from __future__ import annotations

import json
import math
import os
import re
from decimal import Decimal
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from contracts import AssetClass, BrokerName, OrderType, Side
from workers.domain.capabilities import CAPABILITIES
from workers.domain.fees import DEFAULT_FEES, FeeSchedule, RegulatoryFees
from workers.domain.rates import RateLimit, sustained_rate


class ConfigError(Exception):
    """The configuration is invalid; the message names the bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimitConfig(_Strict):
    """A broker's request limit: at most ``requests`` in any ``per_seconds`` window."""

    requests: int = Field(ge=1)
    per_seconds: float = Field(gt=0)
    share: float = Field(default=0.9, gt=0, le=1, description="The part of the limit mbx may use.")


def rate_limit_of(
    broker: BrokerName, config: MbxConfig | None, documented: tuple[tuple[int, float], ...] | None = None
) -> tuple[RateLimitConfig, ...]:
    """The broker's configured request windows (one or several, each enforced), else its
    documented ones (``documented``: an adapter's own, e.g. Robinhood's crypto API)."""
    broker_config = config.brokers.get(broker) if config is not None else None
    if broker_config is not None and broker_config.rate_limit is not None:
        configured = broker_config.rate_limit
        return (configured,) if isinstance(configured, RateLimitConfig) else tuple(configured)
    windows = documented or CAPABILITIES[broker].rate_windows
    return tuple(RateLimitConfig(requests=requests, per_seconds=seconds) for requests, seconds in windows)


def rate_limits(windows: tuple[RateLimitConfig, ...]) -> tuple[RateLimit, ...]:
    """The configured windows as the numbers the budget enforces."""
    return tuple(RateLimit(w.requests, w.per_seconds, w.share) for w in windows)


def orders_per_day_of(broker: BrokerName, config: MbxConfig | None) -> int | None:
    """The order calls a day the broker allows: configured, else documented (None: no such limit)."""
    broker_config = config.brokers.get(broker) if config is not None else None
    if broker_config is not None and broker_config.orders_per_day is not None:
        return broker_config.orders_per_day
    return CAPABILITIES[broker].orders_per_day


def seconds_per_order(broker: BrokerName, config: MbxConfig | None) -> float:
    """The rate budget one order spends, in seconds: placing it, and first listing the orders
    where the broker has no client order ids (so as never to place one twice)."""
    requests = 1 if CAPABILITIES[broker].has_client_order_id else 2
    return requests / sustained_rate(rate_limits(rate_limit_of(broker, config)))


class GatewayConfig(_Strict):
    """Where TWS or IB Gateway listens (Interactive Brokers)."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int | None = Field(
        default=None, ge=1, le=65535, description="unset = IB Gateway's port: 4002 paper, 4001 live (TWS: 7497, 7496)."
    )
    client_id: int = Field(default=1, ge=0, description="The API client id; each connection needs its own.")


class BrokerConfig(_Strict):
    """One broker account."""

    enabled: bool = True
    allocation_percent: Decimal = Field(default=Decimal(1), ge=0, le=1, description="Share of capital, 0..1.")
    paper_trading: bool = True
    priority: int = Field(default=100, ge=0, description="Lower is preferred when scores tie.")
    rate_limit: RateLimitConfig | Annotated[list[RateLimitConfig], Field(min_length=1)] | None = Field(
        default=None,
        description="The broker's request limit: one window, or a list of windows each enforced (say 30 per "
        "second and 1,800 per minute); unset = its documented windows.",
    )
    orders_per_day: int | None = Field(
        default=None,
        ge=1,
        description="Order calls (placements and cancels) the broker allows a day; unset = its documented "
        "limit (Schwab 4,000, the others none). New orders stop at 90% of it; cancels may use the rest.",
    )
    credentials: dict[str, SecretStr] = Field(default_factory=dict)
    request_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest wait for one broker call; a placement not answered by then has an unknown outcome "
        "and is looked up, never sent again blindly.",
    )
    paper_cash: Decimal = Field(
        default=Decimal(100_000),
        gt=0,
        description="Starting cash in USD of the simulated (paper) account, as broker paper accounts start.",
    )
    adapter: str = Field(
        default="simulated",
        min_length=1,
        description="Which adapter talks to this broker; `simulated` is the paper simulator.",
    )
    base_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="The broker API's address; unset = the broker's own (paper or live, by paper_trading).",
    )
    assets: list[AssetClass] | None = Field(
        default=None,
        description="The asset classes routed to this broker; unset = all its adapter trades "
        "(an adapter that trades fewer sets it, e.g. robinhood_crypto: [crypto]).",
    )
    stream_url: str | None = Field(
        default=None,
        pattern=r"^wss?://",
        description="The broker's order-update stream; unset = the one beside base_url.",
    )
    gateway: GatewayConfig | None = Field(
        default=None, description="Interactive Brokers: the TWS or IB Gateway to connect to; unset = localhost."
    )
    account_number: str | None = Field(
        default=None,
        pattern=r"^[0-9]{4,20}$",
        description="Schwab: the account to trade when the login reaches several; unset = the only one.",
    )
    callback_url: str | None = Field(
        default=None,
        pattern=r"^https://",
        description="Schwab: the callback URL registered with the app (`mbx auth schwab`); unset = https://127.0.0.1:8182.",
    )
    account_type: Literal["cash", "margin"] = Field(
        default="cash",
        description="The account's kind: at a `cash` account a short sale is refused (by the router before it "
        "is sent, and by the simulated broker); a `margin` account may sell short, holding margin for it.",
    )
    allow_short: bool = Field(
        default=False,
        description="Whether a sell of a symbol this broker does not hold may open a short here without the "
        "intent asking for one (position_effect open); needs account_type margin.",
    )

    @model_validator(mode="after")
    def _short_needs_margin(self) -> Self:
        if self.allow_short and self.account_type != "margin":
            raise ValueError("allow_short needs account_type margin: a cash account cannot sell short")
        return self


class DatabaseConfig(_Strict):
    url: str | None = None


class KillSwitches(_Strict):
    """Stop new orders: everything, or per broker, strategy or symbol."""

    all: bool = False
    brokers: list[BrokerName] = Field(default_factory=list)
    strategies: list[str] = Field(default_factory=list)
    symbols: list[str] = Field(default_factory=list)


class RiskConfig(_Strict):
    max_broker_allocation: Decimal = Field(
        default=Decimal("0.8"), gt=0, le=1, description="Largest share of portfolio value on one broker."
    )
    min_broker_diversification: int = Field(default=1, ge=1)
    max_order_notional: Decimal | None = Field(default=None, gt=0, description="USD per order.")
    max_symbol_exposure: Decimal | None = Field(default=None, gt=0, description="USD net per symbol, all brokers.")
    reduce_only: bool = Field(default=False, description="Accept only orders that shrink a position.")
    kill_switches: KillSwitches = Field(default_factory=KillSwitches)


class RoutingWeights(_Strict):
    cost: float = Field(default=0.4, ge=0)
    speed: float = Field(default=0.3, ge=0)
    fill: float = Field(default=0.3, ge=0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Self:
        total = self.cost + self.speed + self.fill
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"cost + speed + fill must be 1, got {total:g}")
        return self


class RuleMatch(_Strict):
    """Conditions of a routing rule; every condition given must hold (an empty match matches all)."""

    asset_class: list[AssetClass] | None = None
    symbol: list[str] | None = Field(default=None, description="Glob patterns, e.g. BTC-* or AAPL.")
    side: Side | None = None
    order_type: list[OrderType] | None = None
    strategy: list[str] | None = Field(default=None, description="Glob patterns of strategy ids.")
    min_quantity: Decimal | None = Field(default=None, ge=0)
    max_quantity: Decimal | None = Field(default=None, ge=0)
    min_notional: Decimal | None = Field(default=None, ge=0, description="USD, estimated at the reference price.")
    max_notional: Decimal | None = Field(default=None, ge=0)


class RoutingRule(_Strict):
    """A user routing rule. ``require`` and ``exclude`` are hard constraints; ``prefer`` picks the
    broker among the eligible ones; ``weights`` replaces the scoring weights for matching orders."""

    name: str = Field(min_length=1, max_length=100)
    match: RuleMatch = Field(default_factory=RuleMatch)
    prefer: list[BrokerName] = Field(default_factory=list)
    require: list[BrokerName] = Field(default_factory=list)
    exclude: list[BrokerName] = Field(default_factory=list)
    weights: RoutingWeights | None = None

    @model_validator(mode="after")
    def _does_something(self) -> Self:
        if not (self.prefer or self.require or self.exclude or self.weights):
            raise ValueError(f"rule {self.name!r} has no action: give prefer, require, exclude or weights")
        return self


def _default_latency() -> dict[BrokerName, float]:
    # Alpaca: ack about RTT + 2 ms, marketable fill about 9 ms later; Schwab: 200-250 ms per REST
    # call. The others publish nothing: 100 ms until the executors measure them.
    return {
        BrokerName.ALPACA: 15.0,
        BrokerName.SCHWAB: 225.0,
        BrokerName.COINBASE: 100.0,
        BrokerName.ROBINHOOD: 100.0,
        BrokerName.IBKR: 100.0,
    }


class RoutingConfig(_Strict):
    weights: RoutingWeights = Field(default_factory=RoutingWeights)
    rules: list[RoutingRule] = Field(default_factory=list, description="Evaluated in order; see docs/routing.md.")
    fees: dict[BrokerName, dict[AssetClass, FeeSchedule]] = Field(
        default_factory=dict, description="Per broker and asset class; replaces the built-in schedule."
    )
    regulatory: RegulatoryFees = Field(default_factory=RegulatoryFees)
    volume_30d: dict[BrokerName, Decimal] = Field(default_factory=dict, description="USD, selects fee tiers.")
    expected_latency_ms: dict[BrokerName, float] = Field(default_factory=_default_latency)
    fill_score_prior: float = Field(default=0.5, ge=0, le=1, description="Fill score until measured.")
    min_fill_samples: int = Field(default=50, ge=1, description="Measured orders before the fill score is used.")
    heartbeat_timeout_s: float = Field(default=5.0, gt=0, description="A broker silent this long is down.")
    startup_grace_s: float = Field(
        default=10.0,
        ge=0,
        description="After the router starts or NATS comes back, how long intents wait for a broker not heard "
        "from since (starting, not down) before routing without it.",
    )
    hold_when_unsure_s: float = Field(
        default=30.0,
        ge=0,
        description="How long the router holds an intent, rather than routing without a broker, while that "
        "broker is unsure: its heartbeat is stale but the bus may be why (the router's own bus operations "
        "fail, or several brokers went silent together). Counted from the end of the heartbeat timeout; "
        "then the broker is down. See docs/routing.md.",
    )
    min_rate_headroom: float = Field(
        default=0.05, ge=0, le=1, description="Below this share of its rate budget left a broker is skipped."
    )
    max_queue_wait_s: float | None = Field(
        default=2.0,
        ge=0,
        description="A broker whose queued orders would keep a new one waiting longer than this for its rate "
        "budget is skipped while another can take the order (null: never skipped for its queue).",
    )

    @model_validator(mode="after")
    def _unique_rule_names(self) -> Self:
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique: {', '.join(duplicates)}")
        return self

    def fee_schedule(self, broker: BrokerName, asset: AssetClass) -> FeeSchedule | None:
        return self.fees.get(broker, {}).get(asset) or DEFAULT_FEES.get(broker, {}).get(asset)


class MarketDataConfig(_Strict):
    """Where the router's reference prices come from, and how old one may be."""

    source: str = Field(
        default="simulated",
        min_length=1,
        description="The quote source of every asset class ``sources`` does not name; see docs/routing.md.",
    )
    sources: dict[AssetClass, str] = Field(
        default_factory=dict,
        description="A quote source per asset class (equity, crypto, option), e.g. {equity: alpaca, crypto: coinbase}.",
    )
    max_age_s: float = Field(
        default=5.0,
        gt=0,
        description="A quote older than this is stale: not used for risk limits, fees or slippage.",
    )
    base_url: str | None = Field(
        default=None, pattern=r"^https?://", description="The market-data API's address; unset = the source's own."
    )
    requests_per_minute: int = Field(
        default=180, ge=1, description="Most quote requests a minute (Alpaca's free data plan allows 200)."
    )
    cache_s: float = Field(
        default=1.0, ge=0, description="A symbol's quote is asked for at most once in this many seconds."
    )

    @field_validator("sources", mode="before")
    @classmethod
    def _known_asset_classes(cls, value: Any) -> Any:
        """Name an unknown asset class and the known ones (pydantic's enum message does not say
        which key it was)."""
        if isinstance(value, dict):
            known = [str(a) for a in AssetClass]
            unknown = sorted(str(k) for k in value if str(k) not in known)
            if unknown:
                raise ValueError(f"unknown asset class {', '.join(unknown)} (known: {', '.join(known)})")
            empty = sorted(str(k) for k, v in value.items() if not v)
            if empty:
                raise ValueError(f"no quote source named for {', '.join(empty)}")
        return value

    def source_for(self, asset: AssetClass) -> str:
        """The quote source of ``asset``: its own in ``sources``, else ``source``."""
        return self.sources.get(asset, self.source)


DEFAULT_DEPTH: dict[AssetClass, Decimal] = {
    AssetClass.EQUITY: Decimal(2000),
    AssetClass.CRYPTO: Decimal(2),
    AssetClass.OPTION: Decimal(20),
}
"""The simulated book's depth per asset class: the quantity (shares, coins, contracts) that moves
a broker's price by 1 bps. Illustrative, not measured: 20,000 shares at one broker cost 5 bps."""


def _positive_depth(value: Decimal) -> Decimal:
    if value <= 0:
        raise ValueError(f"a depth must be more than 0 (the quantity that moves the price by 1 bps), got {value}")
    return value


Depth = Annotated[Decimal, AfterValidator(_positive_depth)]


class BrokerDepth(_Strict):
    """One simulated broker's depth, where it differs from every broker's."""

    depth: dict[AssetClass, Depth] = Field(
        default_factory=dict, description="Per asset class: the quantity that moves this broker's price by 1 bps."
    )
    symbols: dict[str, Depth] = Field(default_factory=dict, description="Per symbol, at this broker only.")


class ImpactConfig(_Strict):
    """The simulated brokers' market impact (docs/routing.md, "Market impact in the simulator"):
    taking q units walks a broker's price by q / depth bps, and the move recovers with the
    half-life ``recovery_s``. Off by default, so the simulator fills at its fixed touch."""

    enabled: bool = Field(default=False, description="Whether simulated fills move the price.")
    recovery_s: float = Field(
        default=60.0, description="Half-life in seconds of a broker's price displacement (how fast its book refills)."
    )
    depth: dict[AssetClass, Depth] = Field(
        default_factory=lambda: dict(DEFAULT_DEPTH),
        description="Per asset class: the quantity that moves a broker's price by 1 bps (an asset class left "
        "out keeps its default).",
    )
    symbols: dict[str, Depth] = Field(default_factory=dict, description="Per symbol, at every broker.")
    brokers: dict[BrokerName, BrokerDepth] = Field(
        default_factory=dict, description="Per broker: its own depth per asset class or per symbol."
    )

    @field_validator("recovery_s")
    @classmethod
    def _recovers(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"recovery_s must be more than 0 seconds (the half-life of a price displacement), got {value:g}"
            )
        return value

    def depth_of(self, broker: BrokerName, symbol: str, asset: AssetClass) -> Decimal:
        """The depth of ``symbol`` at ``broker``, the most specific setting first: the broker's
        for the symbol, every broker's for the symbol, the broker's for the asset class, every
        broker's for the asset class, the built-in default."""
        own = self.brokers.get(broker) or BrokerDepth()
        for table, key in ((own.symbols, symbol), (self.symbols, symbol)):
            if key in table:
                return table[key]
        return own.depth.get(asset) or self.depth.get(asset) or DEFAULT_DEPTH[asset]


class SimulationConfig(_Strict):
    """How the simulated (paper) brokers behave."""

    impact: ImpactConfig = Field(default_factory=ImpactConfig)


class ApprovalRule(_Strict):
    """Orders this rule matches wait for an operator's approval before they are routed."""

    name: str = Field(min_length=1, max_length=100)
    match: RuleMatch = Field(
        default_factory=RuleMatch,
        description="As a routing rule's (an empty match holds every order); a size bound holds an order "
        "whose size cannot be told (no quote).",
    )
    approvers: Literal[1, 2] = Field(
        default=1, description="Operators who must approve; with 2, the second must be another operator."
    )
    expire_after_s: float = Field(
        default=900.0,
        gt=0,
        le=7 * 86400,
        description="Seconds an order waits for its approvals; then it ends rejected (approval_expired).",
    )


class ApprovalsConfig(_Strict):
    """Four eyes on chosen orders (docs/operations.md, "Approvals")."""

    rules: list[ApprovalRule] = Field(
        default_factory=list, description="Evaluated in order; the first that matches holds the order."
    )

    @field_validator("rules")
    @classmethod
    def _names_unique(cls, rules: list[ApprovalRule]) -> list[ApprovalRule]:
        seen: set[str] = set()
        for rule in rules:
            if rule.name in seen:
                raise ValueError(f"two approval rules are named {rule.name!r}")
            seen.add(rule.name)
        return rules


class MbxConfig(_Strict):
    """The deployment config, in the shape of the multi-broker YAML file."""

    brokers: dict[BrokerName, BrokerConfig] = Field(
        default_factory=lambda: {name: BrokerConfig() for name in BrokerName}
    )
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    risk: RiskConfig = Field(default_factory=RiskConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    market_data: MarketDataConfig = Field(default_factory=MarketDataConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    approvals: ApprovalsConfig = Field(default_factory=ApprovalsConfig)

    @model_validator(mode="after")
    def _live_needs_a_real_adapter(self) -> Self:
        for name, broker in self.brokers.items():
            if broker.enabled and not broker.paper_trading and broker.adapter == "simulated":
                raise ValueError(
                    f"brokers.{name}.paper_trading: false needs a real adapter (brokers.{name}.adapter); "
                    "the simulator only trades on paper"
                )
        return self

    def enabled_brokers(self) -> list[BrokerName]:
        return [name for name in BrokerName if name in self.brokers and self.brokers[name].enabled]


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(node: Any, path: str, missing: list[str]) -> Any:
    """Replace ``${VAR}`` with the environment's value; remember what is unset."""
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k), missing) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{path}[{i}]", missing) for i, v in enumerate(node)]
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1))
            if value is None:
                missing.append(f"{path}: environment variable {m.group(1)} is not set")
                return ""
            return value

        return _ENV_REF.sub(sub, node)
    return node


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"] if part != "[key]")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{key}: {msg}" if key else msg)
    return "; ".join(lines)


def parse_config(raw: Any, source: str = "config") -> MbxConfig:
    """Validate a config mapping; ``ConfigError`` names every bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    missing: list[str] = []
    expanded = _expand_env(raw, "", missing)
    # Unset variables only matter for brokers that will really use their credentials.
    try:
        config = MbxConfig.model_validate(expanded)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_format_validation_error(exc)}") from None
    needed = [m for m in missing if not _needs_no_credentials(m, config)]
    if needed:
        raise ConfigError(f"{source}: " + "; ".join(needed))
    return config


def _needs_no_credentials(message: str, config: MbxConfig) -> bool:
    """An unset variable of a disabled broker, or of one the simulator plays, does not matter."""
    parts = message.split(".", 2)
    if len(parts) < 2 or parts[0] != "brokers":
        return False
    try:
        broker = config.brokers.get(BrokerName(parts[1]))
    except ValueError:
        return False
    return broker is not None and (not broker.enabled or (broker.paper_trading and broker.adapter == "simulated"))


def config_to_json(config: MbxConfig) -> bytes:
    """The live config as stored in KV: everything but credentials and the database URL."""
    data: dict[str, Any] = config.model_dump(
        mode="json", exclude={"database": True, "brokers": {"__all__": {"credentials"}}}
    )
    return json.dumps(data, sort_keys=True).encode()
