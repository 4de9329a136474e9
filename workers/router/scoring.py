"""Score eligible brokers by cost, speed and fill quality. Pure.

    score = w_cost * (1 - normalized_fee) + w_speed * (1 - normalized_latency) + w_fill * fill_score

Normalisation is min-max across the eligible candidates of one intent: the cheapest gets
normalized fee 0 and the dearest 1. When all candidates have the same value (including a single
candidate) every normalized value is 0, so that component favours nobody. Ties in the total are
broken by the configured priority (lower first), then by the broker's name order; totals are
compared as shown, rounded to six decimals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from math import floor
from typing import Any, NamedTuple

from contracts import BrokerName, CandidateScore

BROKERS: tuple[BrokerName, ...] = tuple(BrokerName)
"""Every broker, in the order ties are broken and decisions list them."""
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


def _normalize(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    if high <= low:
        return [0.0] * len(values)
    span = high - low
    return [(v - low) / span for v in values]


def score(candidates: Sequence[CandidateInputs], weights: Weights) -> list[CandidateScore]:
    """Every candidate's component scores and total, best first."""
    return [CandidateScore.model_validate(row) for row in scored_rows(candidates, weights)]


def scored_rows(candidates: Sequence[CandidateInputs], weights: Weights) -> list[dict[str, Any]]:
    """``score`` as plain field dicts, for building a decision in one validation."""
    if not candidates:
        return []
    fees = _normalize([float(c.estimated_fee) for c in candidates])
    latencies = _normalize([c.expected_latency_ms for c in candidates])
    w_cost, w_speed, w_fill = weights.cost, weights.speed, weights.fill
    keyed = []
    for c, fee_n, lat_n in zip(candidates, fees, latencies, strict=True):
        total = floor((w_cost * (1.0 - fee_n) + w_speed * (1.0 - lat_n) + w_fill * c.fill_score) * 1e6 + 0.5) / 1e6
        total = min(1.0, max(0.0, total))
        # Scores are shown to six decimals (rounded half up, inline: this loop is hot).
        # Totals equal to the six decimals a decision shows are a tie: priority decides, then
        # the broker's rank (unique, so the sort never compares further).
        keyed.append((-total, c.priority, RANK[c.broker], c, fee_n, lat_n))
    keyed.sort()
    return [
        {
            "broker": c.broker,
            "estimated_fee": c.estimated_fee,
            "expected_latency_ms": c.expected_latency_ms,
            "fill_score": c.fill_score,
            "cost_score": floor((1.0 - fee_n) * 1e6 + 0.5) / 1e6,
            "speed_score": floor((1.0 - lat_n) * 1e6 + 0.5) / 1e6,
            "total": -negative_total,
        }
        for negative_total, _, _, c, fee_n, lat_n in keyed
    ]
