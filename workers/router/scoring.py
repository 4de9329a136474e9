"""Score eligible brokers by cost, speed and fill quality. Pure.

    score = w_cost * (1 - normalized_fee) + w_speed * (1 - normalized_latency) + w_fill * fill_score

The latency is the broker's measured (or configured) latency plus the expected wait for its rate
budget behind the orders already queued there.

Normalisation is min-max across the eligible candidates of one intent: the cheapest gets
normalized fee 0 and the dearest 1. When all candidates have the same value (including a single
candidate) every normalized value is 0, so that component favours nobody. Ties in the total are
broken by the shorter expected wait, then the configured priority (lower first), then the
broker's name order; totals are compared as shown, rounded to six decimals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from math import floor
from typing import Any, NamedTuple

from contracts import BrokerName, CandidateScore
from workers.router.registry import BROKERS

RANK: dict[BrokerName, int] = {broker: k for k, broker in enumerate(BROKERS)}


class CandidateInputs(NamedTuple):
    broker: BrokerName
    estimated_fee: Decimal
    expected_latency_ms: float
    fill_score: float
    priority: int


@dataclass(frozen=True, slots=True)
class Weights:
    cost: float
    speed: float
    fill: float


def _normalize(values: list[float]) -> list[float]:
    if len(values) == 1:
        return [0.0]
    low, high = min(values), max(values)
    if high <= low:
        return [0.0] * len(values)
    span = high - low
    return [(v - low) / span for v in values]


def score(candidates: Sequence[CandidateInputs], weights: Weights) -> list[CandidateScore]:
    """Every candidate's component scores and total, best first."""
    rows = rank_columns(
        [c.broker for c in candidates],
        [c.estimated_fee for c in candidates],
        [c.expected_latency_ms for c in candidates],
        [c.fill_score for c in candidates],
        [c.priority for c in candidates],
        weights,
    )
    return [CandidateScore.model_validate(row) for row in rows]


def rank_columns(  # noqa: PLR0917  (one list per input: the decision's hot path)
    brokers: list[BrokerName],
    fees: list[Decimal],
    latencies: list[float],
    fills: list[float],
    priorities: list[int],
    weights: Weights,
    waits: list[float] | None = None,
) -> list[dict[str, Any]]:
    """``score`` as plain field dicts (a decision validates them with itself, in one pass), from
    one list per input (no per-candidate objects to build). ``waits``: each broker's expected
    wait for its rate budget, ms (the orders queued ahead of this one), added to its latency."""
    if not brokers:
        return []
    waits = waits or [0.0] * len(brokers)
    fee_ns = _normalize([float(f) for f in fees])
    lat_ns = _normalize([latency + wait for latency, wait in zip(latencies, waits, strict=True)])
    w_cost, w_speed, w_fill = weights.cost, weights.speed, weights.fill
    keyed = []
    # Rounding inline: this loop is hot. Scores are shown to six decimals, rounded half up.
    # Totals equal to six decimals are a tie: the shorter wait decides, then priority, then the
    # broker's rank (unique, so rows are never compared).
    for broker, fee, latency, wait, fill, priority, fee_n, lat_n in zip(
        brokers, fees, latencies, waits, fills, priorities, fee_ns, lat_ns, strict=True
    ):
        cost, speed = 1.0 - fee_n, 1.0 - lat_n
        total = floor((w_cost * cost + w_speed * speed + w_fill * fill) * 1e6 + 0.5) / 1e6
        if total > 1.0:
            total = 1.0
        elif total < 0.0:
            total = 0.0
        row = {
            "broker": broker,
            "estimated_fee": fee,
            "expected_latency_ms": latency + wait,
            "expected_wait_ms": wait,
            "fill_score": fill,
            "cost_score": floor(cost * 1e6 + 0.5) / 1e6,
            "speed_score": floor(speed * 1e6 + 0.5) / 1e6,
            "total": total,
        }
        keyed.append((-total, wait, priority, RANK[broker], row))
    keyed.sort()
    return [row for *_, row in keyed]
