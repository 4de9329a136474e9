"""The one place that names the concrete broker adapters and quote sources.

A broker's adapter is chosen by ``brokers.<name>.adapter`` (default ``simulated``) and the
router's quote source by ``market_data.source`` (default ``simulated``), or per asset class by
``market_data.sources``. Everything above this
module sees only the ``Venue`` and ``QuoteSource`` protocols of the domain core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import SecretStr

from contracts import AssetClass, BrokerName
from workers.domain.config import BrokerConfig, ConfigError, GatewayConfig, MbxConfig, rate_limit_of
from workers.domain.quotes import QuotesByAssetClass, QuoteSource
from workers.domain.venue import Venue
from workers.platform.topology import Topology
from workers.venues.alpaca.quotes import DATA_URL as ALPACA_DATA_URL
from workers.venues.alpaca.quotes import AlpacaQuoteSource
from workers.venues.alpaca.venue import LIVE_URL as ALPACA_LIVE_URL
from workers.venues.alpaca.venue import PAPER_URL as ALPACA_PAPER_URL
from workers.venues.alpaca.venue import AlpacaVenue
from workers.venues.coinbase.quotes import CoinbaseQuoteSource
from workers.venues.coinbase.venue import BASE_URL as COINBASE_URL
from workers.venues.coinbase.venue import USER_STREAM_URL as COINBASE_STREAM_URL
from workers.venues.coinbase.venue import CoinbaseVenue
from workers.venues.robinhood.venue import BASE_URL as ROBINHOOD_URL
from workers.venues.robinhood.venue import RobinhoodCryptoVenue
from workers.venues.simulated.book import KvOrderBook
from workers.venues.simulated.impact import ImpactModel
from workers.venues.simulated.quotes import SimulatedQuoteSource
from workers.venues.simulated.venue import SimulatedVenue

if TYPE_CHECKING:
    from workers.platform.bus import JetStream
    from workers.venues.schwab.login import Login
    from workers.venues.schwab.tokens import TokenStore


@dataclass(frozen=True, slots=True)
class VenueContext:
    """What an adapter may need from the executor that hosts it."""

    js: Callable[[], JetStream]
    """The executor's JetStream context, once it is connected (called at first use)."""
    topology: Topology
    request_log: bool = False
    """A simulated broker keeps its request log (``MBX_SIM_REQUEST_LOG``; for crash tests)."""


def _simulated(
    broker: BrokerName, config: MbxConfig, context: VenueContext, prebuilt: SimulatedVenue | None = None
) -> Venue:
    """A simulated broker whose book lives in NATS KV, so it outlives the executor process and
    is shared by its replicas, like a real broker's; it enforces the request limit the executor
    budgets for. With ``simulation.impact.enabled`` its fills move its price (each replica
    keeps its own displacement)."""
    cash = config.brokers[broker].paper_cash if broker in config.brokers else BrokerConfig().paper_cash
    account_type = config.brokers[broker].account_type if broker in config.brokers else "cash"
    venue = prebuilt or SimulatedVenue(broker, rate_limit=request_limit(broker, config), cash=cash)
    venue.account_type = account_type  # the config's, also for a venue built beforehand (tests)
    if config.simulation.impact.enabled:
        venue.impact = ImpactModel.from_config(config.simulation.impact, broker)
    venue.book = KvOrderBook(context.js, context.topology.sim_book_bucket(broker), request_log=context.request_log)
    return venue


def _alpaca(broker: BrokerName, config: MbxConfig, context: VenueContext) -> Venue:
    """Alpaca's Trading API: paper endpoint unless ``paper_trading: false``; ``base_url``
    points it elsewhere (a fake broker in tests)."""
    settings = config.brokers[broker]
    key, secret = _credentials(broker, config, "api_key", "secret_key")
    url = settings.base_url or (ALPACA_PAPER_URL if settings.paper_trading else ALPACA_LIVE_URL)
    return AlpacaVenue(key, secret, base_url=url, stream_url=settings.stream_url, timeout_s=settings.request_timeout_s)


def _coinbase(broker: BrokerName, config: MbxConfig, context: VenueContext) -> Venue:
    """Coinbase Advanced Trade (no paper environment: real money, with the opt-in)."""
    settings = config.brokers[broker]
    key_name, private_key = _credentials(broker, config, "api_key", "api_secret")
    return CoinbaseVenue(
        key_name,
        private_key,
        base_url=settings.base_url or COINBASE_URL,
        stream_url=settings.stream_url or COINBASE_STREAM_URL,
        timeout_s=settings.request_timeout_s,
    )


def _robinhood_crypto(broker: BrokerName, config: MbxConfig, context: VenueContext) -> Venue:
    """Robinhood's Crypto Trading API (crypto only; no paper environment: real money)."""
    settings = config.brokers[broker]
    api_key, private_key = _credentials(broker, config, "api_key", "private_key")
    return RobinhoodCryptoVenue(
        api_key, private_key, base_url=settings.base_url or ROBINHOOD_URL, timeout_s=settings.request_timeout_s
    )


def _schwab(broker: BrokerName, config: MbxConfig, context: VenueContext) -> Venue:
    """Schwab's Trader API through schwab-py, over the login ``mbx auth schwab`` stored
    (imported here: schwab-py is heavy, and only its executor needs it)."""
    from workers.venues.schwab.venue import SchwabVenue  # noqa: PLC0415

    settings = config.brokers[broker]
    app_key, app_secret = _credentials(broker, config, "app_key", "app_secret")
    return SchwabVenue(
        app_key,
        app_secret,
        schwab_token_store(),
        account_number=settings.account_number,
        base_url=settings.base_url,
        timeout_s=settings.request_timeout_s,
    )


def _gateway(settings: BrokerConfig) -> tuple[str, int, int]:
    """Where the IB gateway listens (host, port, client id); port unset = IB Gateway's paper or
    live port, by ``paper_trading``."""
    gateway = settings.gateway or GatewayConfig()
    return gateway.host, gateway.port or (4002 if settings.paper_trading else 4001), gateway.client_id


def _ibkr(broker: BrokerName, config: MbxConfig, context: VenueContext) -> Venue:
    """Interactive Brokers through ib_async to TWS or IB Gateway (imported here: only its
    executor needs it). Order ids are kept in KV, shared by the replicas."""
    from workers.venues.ibkr.order_ids import KvOrderIds  # noqa: PLC0415
    from workers.venues.ibkr.venue import IbkrVenue  # noqa: PLC0415

    settings = config.brokers[broker]
    host, port, client_id = _gateway(settings)
    return IbkrVenue(
        host,
        port,
        client_id,
        KvOrderIds(context.js, context.topology.order_ids_bucket(broker)),
        timeout_s=settings.request_timeout_s,
        paper=settings.paper_trading,
    )


def schwab_token_store() -> TokenStore:
    """Where the Schwab login is kept (``MBX_SCHWAB_TOKEN_FILE``)."""
    from workers.venues.schwab.tokens import TokenStore  # noqa: PLC0415

    return TokenStore.from_env()


def schwab_login(config: MbxConfig) -> Login:
    """The terminal login to Schwab, with the app's keys and callback URL from the config."""
    from workers.venues.schwab.login import API_URL, DEFAULT_CALLBACK_URL, Login  # noqa: PLC0415

    broker = BrokerName.SCHWAB
    settings = config.brokers.get(broker) or BrokerConfig(adapter="schwab")
    held = settings.credentials
    unset = [f"brokers.schwab.credentials.{n}" for n in ("app_key", "app_secret") if not held.get(n, SecretStr(""))]
    if unset:
        raise ConfigError(f"{', '.join(unset)}: needed to log in to Schwab (not set)")
    app_key, app_secret = _credentials(broker, config, "app_key", "app_secret")
    return Login(
        app_key,
        app_secret,
        callback_url=settings.callback_url or DEFAULT_CALLBACK_URL,
        base_url=settings.base_url or API_URL,
    )


ADAPTERS: dict[str, Callable[..., Venue]] = {
    "simulated": _simulated,
    "alpaca": _alpaca,
    "coinbase": _coinbase,
    "robinhood_crypto": _robinhood_crypto,
    "schwab": _schwab,
    "ibkr": _ibkr,
}
BROKER_OF_ADAPTER: dict[str, BrokerName] = {
    "alpaca": BrokerName.ALPACA,
    "coinbase": BrokerName.COINBASE,
    "robinhood_crypto": BrokerName.ROBINHOOD,
    "schwab": BrokerName.SCHWAB,
    "ibkr": BrokerName.IBKR,
}
ADAPTER_ASSETS: dict[str, list[AssetClass]] = {"robinhood_crypto": [AssetClass.CRYPTO]}
"""Adapters that trade fewer asset classes than the broker: routing sends them only these."""
"""Which broker each real adapter talks to (the simulator plays any)."""
PAPER_ENDPOINT: frozenset[str] = frozenset({"alpaca", "ibkr"})
"""Real adapters whose broker has a paper environment (the others trade real money)."""
CREDENTIALS: dict[str, tuple[str, ...]] = {
    "alpaca": ("api_key", "secret_key"),
    "coinbase": ("api_key", "api_secret"),
    "robinhood_crypto": ("api_key", "private_key"),
    "schwab": ("app_key", "app_secret"),
}


def _credentials(broker: BrokerName, config: MbxConfig, *names: str) -> tuple[str, ...]:
    held = config.brokers[broker].credentials
    return tuple(held[name].get_secret_value() for name in names)


def resolve_config(config: MbxConfig) -> MbxConfig:
    """The config with each broker's ``assets`` narrowed to what its adapter trades, so the
    router (which reads only the config) never sends a broker what its adapter cannot place."""
    brokers = dict(config.brokers)
    for name, broker in config.brokers.items():
        only = ADAPTER_ASSETS.get(broker.adapter)
        if only is not None:
            wanted = broker.assets if broker.assets is not None else only
            brokers[name] = broker.model_copy(update={"assets": [a for a in wanted if a in only]})
    return config.model_copy(update={"brokers": brokers})


def live_brokers(config: MbxConfig) -> list[str]:
    """Enabled brokers whose adapter would trade real money: a real adapter with
    ``paper_trading: false``, or one whose broker has no paper environment."""
    return [
        str(name)
        for name, broker in config.brokers.items()
        if broker.enabled
        and broker.adapter != "simulated"
        and (not broker.paper_trading or broker.adapter not in PAPER_ENDPOINT)
    ]


def live_refusal(config: MbxConfig, allowed: bool) -> str | None:
    """The sentence that stops a start trading real money without the opt-in (None: go)."""
    live = live_brokers(config)
    if not live or allowed:
        return None
    return f"refusing to start: {', '.join(live)} would trade real money; start with --live (or MBX_LIVE=1) to allow it"


def _alpaca_quotes(config: MbxConfig) -> QuoteSource:
    """Alpaca's market data, with the keys of ``brokers.alpaca``."""
    key, secret = _credentials(BrokerName.ALPACA, config, "api_key", "secret_key")
    data = config.market_data
    return AlpacaQuoteSource(
        key,
        secret,
        base_url=data.base_url or ALPACA_DATA_URL,
        requests_per_minute=data.requests_per_minute,
        cache_s=data.cache_s,
    )


def _coinbase_quotes(config: MbxConfig) -> QuoteSource:
    """Coinbase's public tickers (no keys): crypto pairs only."""
    data = config.market_data
    return CoinbaseQuoteSource(
        base_url=data.base_url or COINBASE_URL, requests_per_minute=data.requests_per_minute, cache_s=data.cache_s
    )


def _ibkr_quotes(config: MbxConfig) -> QuoteSource:
    """IB market data through the router's own connection to the gateway of ``brokers.ibkr``."""
    from workers.venues.ibkr.quotes import QUOTE_CLIENT_ID_OFFSET, IbkrQuoteSource  # noqa: PLC0415

    host, port, client_id = _gateway(config.brokers.get(BrokerName.IBKR) or BrokerConfig(adapter="ibkr"))
    data = config.market_data
    return IbkrQuoteSource(
        host,
        port,
        client_id + QUOTE_CLIENT_ID_OFFSET,
        requests_per_minute=data.requests_per_minute,
        cache_s=data.cache_s,
    )


QUOTE_SOURCES: dict[str, Callable[[MbxConfig], QuoteSource]] = {
    "simulated": lambda _config: SimulatedQuoteSource(),
    "alpaca": _alpaca_quotes,
    "coinbase": _coinbase_quotes,
    "ibkr": _ibkr_quotes,
}
QUOTE_CREDENTIALS: dict[str, tuple[BrokerName, tuple[str, ...]]] = {
    "alpaca": (BrokerName.ALPACA, ("api_key", "secret_key"))
}
"""Whose keys each real quote source uses."""
QUOTE_ASSETS: dict[str, frozenset[AssetClass]] = {
    "simulated": frozenset(AssetClass),
    "alpaca": frozenset(AssetClass),
    "coinbase": frozenset({AssetClass.CRYPTO}),
    "ibkr": frozenset(AssetClass),
}
"""What each quote source quotes (Coinbase's public tickers: crypto pairs only)."""


def request_limit(broker: BrokerName, config: MbxConfig | None) -> tuple[int, float]:
    """(requests, seconds) of the broker's first window: configured, else documented (the
    simulator plays the broker's side of that one)."""
    first = rate_limit_of(broker, config)[0]
    return first.requests, first.per_seconds


def check_config(config: MbxConfig) -> None:
    """Refuse unknown adapter and quote-source names, naming the key (at start, before any
    worker runs)."""
    problems = []
    for name, broker in config.brokers.items():
        if broker.adapter not in ADAPTERS:
            known = ", ".join(sorted(ADAPTERS))
            problems.append(f"brokers.{name}.adapter: unknown adapter {broker.adapter!r} (known: {known})")
            continue
        only = ADAPTER_ASSETS.get(broker.adapter)
        beyond = [str(a) for a in broker.assets or [] if only is not None and a not in only]
        if beyond:
            problems.append(f"brokers.{name}.assets: the {broker.adapter} adapter does not trade {', '.join(beyond)}")
        talks_to = BROKER_OF_ADAPTER.get(broker.adapter)
        if talks_to is not None and talks_to != name:
            problems.append(f"brokers.{name}.adapter: {broker.adapter!r} is {talks_to}'s adapter")
        if broker.enabled:
            unset = [c for c in CREDENTIALS.get(broker.adapter, ()) if not broker.credentials.get(c, SecretStr(""))]
            unset_text = ", ".join(f"brokers.{name}.credentials.{c}" for c in unset)
            if unset:
                problems.append(f"{unset_text}: needed by the {broker.adapter} adapter (not set)")
    problems += quote_source_problems(config)
    if problems:
        raise ConfigError("; ".join(problems))


def quote_source_problems(config: MbxConfig) -> list[str]:
    """What is wrong with ``market_data.source`` and ``market_data.sources``, each naming its key.

    ``source`` is checked as it always was (a known name, the keys it needs). A source of
    ``sources`` must also quote its asset class, and a broker's source must be a broker of
    ``brokers:`` (enabled): naming a broker per asset class says that broker is in use."""
    data = config.market_data
    known = ", ".join(sorted(QUOTE_SOURCES))
    problems = []
    keyed: list[tuple[str, str, AssetClass | None]] = [("market_data.source", data.source, None)]
    keyed += [(f"market_data.sources.{asset}", name, asset) for asset, name in sorted(data.sources.items())]
    for key, source, asset in keyed:
        if source not in QUOTE_SOURCES:
            if source in set(BrokerName):
                problems.append(f"{key}: {source!r} is a broker without a quote source in mbx (known: {known})")
            else:
                problems.append(f"{key}: unknown quote source {source!r} (known: {known})")
            continue
        if source in QUOTE_CREDENTIALS:
            owner, names = QUOTE_CREDENTIALS[source]
            held = config.brokers[owner].credentials if owner in config.brokers else {}
            unset = [f"brokers.{owner}.credentials.{n}" for n in names if not held.get(n, SecretStr(""))]
            if unset:
                problems.append(f"{', '.join(unset)}: needed by {key} {source!r} (not set)")
        if asset is None:
            continue
        if asset not in QUOTE_ASSETS[source]:
            covers = ", ".join(sorted(QUOTE_ASSETS[source]))
            problems.append(f"{key}: {source!r} does not quote {asset} (it quotes {covers})")
        if source in set(BrokerName):
            broker = config.brokers.get(BrokerName(source))
            if broker is None or not broker.enabled:
                state = "not configured" if broker is None else "disabled"
                problems.append(f"{key}: {source!r} is {state} in brokers: (configure it, or pick another source)")
    return problems


def build_venue(
    broker: BrokerName, config: MbxConfig, context: VenueContext, *, simulated: SimulatedVenue | None = None
) -> Venue:
    """The adapter ``brokers.<broker>.adapter`` names. ``simulated`` hands in a simulator built
    by the caller (tests that set its cash or faults first)."""
    check_config(config)
    name = config.brokers[broker].adapter if broker in config.brokers else "simulated"
    if name == "simulated":
        return _simulated(broker, config, context, simulated)
    return ADAPTERS[name](broker, config, context)


def build_quote_source(config: MbxConfig) -> QuoteSource:
    """The router's quote source: ``market_data.source``'s alone when ``market_data.sources``
    names no other, else one per asset class (a source named twice is built once)."""
    check_config(config)
    data = config.market_data
    built: dict[str, QuoteSource] = {}

    def source(name: str) -> QuoteSource:
        if name not in built:
            built[name] = QUOTE_SOURCES[name](config)
        return built[name]

    default = source(data.source)
    by_asset = {asset: source(name) for asset, name in data.sources.items() if name != data.source}
    return QuotesByAssetClass(default, by_asset) if by_asset else default
