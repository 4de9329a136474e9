"""The router as a Python API, in the PRD's shape: ``route``, ``route_batch``, ``add_rule``.

``OrderRouter`` decides in-process (tests, notebooks, the benchmark, a strategy that wants to
know before it sends). ``add_rule_live`` adds a rule to the running system's live config in KV,
with compare-and-set so concurrent edits are never lost.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from contracts import OrderIntent, RouteDecision, Subjects
from workers.domain.config import MbxConfig, RoutingRule, config_to_json, parse_config
from workers.platform.bus import JetStream
from workers.platform.live_config import change_live_config
from workers.router.registry import BrokerRegistry
from workers.router.rules import MarketView, Rejection, route
from workers.router.state import RouterState


class OrderRouter:
    """Routing decisions with the same rules, scoring and risk checks as the router worker."""

    def __init__(self, config: MbxConfig | None = None, registry: BrokerRegistry | None = None) -> None:
        self.state = RouterState(config or MbxConfig(), registry=registry)
        self._registry_known = registry is not None

    @property
    def config(self) -> MbxConfig:
        return self.state.config

    def route(self, intent: OrderIntent, reference_price: Decimal | None = None) -> RouteDecision | Rejection:
        market = self.state.market(reference_price)
        if not self._registry_known:  # no heartbeats in-process: take every broker to be up
            market = MarketView(reference_price=reference_price, fill_scores=market.fill_scores)
        return route(intent, self.config, market=market, risk=self.state.risk_view(), config_version=self.state.version)

    def route_batch(
        self, intents: Sequence[OrderIntent], prices: dict[str, Decimal] | None = None
    ) -> list[RouteDecision | Rejection]:
        prices = prices or {}
        return [self.route(i, prices.get(i.symbol)) for i in intents]

    def add_rule(self, rule: RoutingRule) -> None:
        """Append a rule (evaluated after the existing ones); a duplicate name is refused."""
        self.state.config = with_rule(self.config, rule)


def with_rule(config: MbxConfig, rule: RoutingRule) -> MbxConfig:
    raw = json.loads(config_to_json(config))
    raw["routing"]["rules"].append(rule.model_dump(mode="json"))
    return parse_config(raw, "rules")


async def add_rule_live(js: JetStream, subjects: Subjects, rule: RoutingRule) -> int:
    """Add a rule to the live config; returns the new revision. Retries if another edit wins."""

    def add(live: dict[str, Any]) -> MbxConfig:
        return with_rule(parse_config(live, "live config"), rule)

    revision, _ = await change_live_config(js, subjects, add)
    return revision
