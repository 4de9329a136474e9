"""Route decisions per second, in-process, for 5 brokers and 50 user rules.

Figures are reported beside baselines measured in the same run (this machine is noisy):
- the same routing with no user rules;
- building and serialising one RouteDecision (the floor any decision pays: the wire model).
Run with `make bench`; results also go to bench/results/route.json.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

from bench.report import publish
from contracts import BrokerName, BrokerStatus, OrderIntent, RouteDecision
from workers.domain.config import MbxConfig, parse_config
from workers.router.registry import BrokerRegistry
from workers.router.rules import route
from workers.router.state import RouterState

SYMBOLS = ["AAPL", "MSFT", "SPY", "NVDA", "BTC-USD", "ETH-USD", "QQQ", "TSLA"]


def intents(n: int) -> list[OrderIntent]:
    out = []
    for k in range(n):
        symbol = SYMBOLS[k % len(SYMBOLS)]
        crypto = symbol.endswith("-USD")
        out.append(
            OrderIntent(
                intent_id=f"bench-{k}",
                strategy_id=f"strat{k % 4}",
                symbol=symbol,
                asset_class="crypto" if crypto else "equity",
                side="buy" if k % 3 else "sell",
                quantity=Decimal("0.05") if crypto else Decimal(1 + k % 50),
            )
        )
    return out


def fifty_rules() -> MbxConfig:
    rules = []
    for k in range(50):
        rules.append(
            {
                "name": f"rule-{k}",
                "match": {
                    "symbol": [f"{SYMBOLS[k % len(SYMBOLS)][:2]}*"],
                    "strategy": [f"strat{k % 5}"],
                    "min_notional": 100 * (k % 7),
                },
                **({"prefer": [list(BrokerName)[k % 5].value]} if k % 3 else {"exclude": ["robinhood"]}),
            }
        )
    return parse_config({"routing": {"rules": rules}})


def state_for(config: MbxConfig) -> RouterState:
    registry = BrokerRegistry(heartbeat_timeout=3600)
    for broker in BrokerName:
        registry.update(BrokerStatus(broker=broker, connected=True, latency_ms=10, error_rate=0, rate_limit_headroom=1))
    return RouterState(config, registry=registry)


def per_second(work: Callable[[], int], seconds: float = 2.0) -> float:
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += work()
    return done / (time.perf_counter() - started)


def run(seconds: float = 2.0, size: int = 2000) -> dict[str, float]:
    batch = intents(size)

    def routing(config: MbxConfig) -> Callable[[], int]:
        state = state_for(config)
        market, risk = state.market(Decimal(100)), state.risk_view()

        def work() -> int:
            for intent in batch:
                route(intent, config, market=market, risk=risk, config_version=1)
            return len(batch)

        return work

    sample = route(batch[0], fifty_rules(), market=state_for(MbxConfig()).market(Decimal(100)))
    assert isinstance(sample, RouteDecision)

    def model_floor() -> int:
        for _ in range(500):
            type(sample).model_validate(sample.__dict__).model_dump_json()
        return 500

    with_rules = per_second(routing(fifty_rules()), seconds)
    no_rules = per_second(routing(MbxConfig()), seconds)
    floor = per_second(model_floor, seconds)
    return {
        "decisions_per_s_5_brokers_50_rules": round(with_rules),
        "decisions_per_s_5_brokers_no_rules": round(no_rules),
        "baseline_decision_model_build_and_json_per_s": round(floor),
        "ratio_50_rules_to_no_rules": round(with_rules / no_rules, 3),
        "ratio_50_rules_to_model_floor": round(with_rules / floor, 3),
        "target_decisions_per_s": 50_000,
    }


def main() -> None:
    results = run()
    publish("route decisions, in-process (one core)", "route", results)


if __name__ == "__main__":
    main()
