"""The one place that names the concrete broker adapters and quote sources.

A broker's adapter is chosen by ``brokers.<name>.adapter`` (default ``simulated``) and the
router's quote source by ``market_data.source`` (default ``simulated``). Everything above this
module sees only the ``Venue`` and ``QuoteSource`` protocols of the domain core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nats.js import JetStreamContext

from contracts import BrokerName
from workers.domain.capabilities import CAPABILITIES
from workers.domain.config import BrokerConfig, ConfigError, MbxConfig
from workers.domain.quotes import QuoteSource
from workers.domain.venue import Venue
from workers.platform.topology import Topology
from workers.venues.simulated.book import KvOrderBook
from workers.venues.simulated.quotes import SimulatedQuoteSource
from workers.venues.simulated.venue import SimulatedVenue


@dataclass(frozen=True, slots=True)
class VenueContext:
    """What an adapter may need from the executor that hosts it."""

    js: Callable[[], JetStreamContext]
    """The executor's JetStream context, once it is connected (called at first use)."""
    topology: Topology
    request_log: bool = False
    """A simulated broker keeps its request log (``MBX_SIM_REQUEST_LOG``; for crash tests)."""


def _simulated(
    broker: BrokerName, config: MbxConfig, context: VenueContext, prebuilt: SimulatedVenue | None = None
) -> Venue:
    """A simulated broker whose book lives in NATS KV, so it outlives the executor process and
    is shared by its replicas, like a real broker's; it enforces the request limit the executor
    budgets for."""
    cash = config.brokers[broker].paper_cash if broker in config.brokers else BrokerConfig().paper_cash
    venue = prebuilt or SimulatedVenue(broker, rate_limit=request_limit(broker, config), cash=cash)
    venue.book = KvOrderBook(context.js, context.topology.sim_book_bucket(broker), request_log=context.request_log)
    return venue


ADAPTERS: dict[str, Callable[..., Venue]] = {"simulated": _simulated}
QUOTE_SOURCES: dict[str, Callable[[MbxConfig], QuoteSource]] = {"simulated": lambda _config: SimulatedQuoteSource()}


def request_limit(broker: BrokerName, config: MbxConfig | None) -> tuple[int, float]:
    """(requests, seconds) the broker allows: configured, else documented."""
    configured = config.brokers[broker].rate_limit if config and broker in config.brokers else None
    if configured is not None:
        return configured.requests, configured.per_seconds
    return CAPABILITIES[broker].rate_limit_per_minute, 60.0


def check_config(config: MbxConfig) -> None:
    """Refuse unknown adapter and quote-source names, naming the key (at start, before any
    worker runs)."""
    problems = [
        f"brokers.{name}.adapter: unknown adapter {broker.adapter!r} (known: {', '.join(sorted(ADAPTERS))})"
        for name, broker in config.brokers.items()
        if broker.adapter not in ADAPTERS
    ]
    source = config.market_data.source
    if source not in QUOTE_SOURCES:
        known = ", ".join(sorted(QUOTE_SOURCES))
        problems.append(f"market_data.source: unknown quote source {source!r} (known: {known})")
    if problems:
        raise ConfigError("; ".join(problems))


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
    check_config(config)
    return QUOTE_SOURCES[config.market_data.source](config)
