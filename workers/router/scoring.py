"""Score eligible brokers by cost, speed and fill quality. Pure.

    score = w_cost * (1 - normalized_fee) + w_speed * (1 - normalized_latency) + w_fill * fill_score

Normalisation is min-max across the eligible candidates of one intent: the cheapest gets
normalized fee 0 and the dearest 1. When all candidates have the same value (including a single
candidate) every normalized value is 0, so that component favours nobody. Ties in the total are
broken by the configured priority (lower first), then by the broker's name order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from contracts import BrokerName, CandidateScore


@dataclass(frozen=True, slots=True)
class CandidateInputs:
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
    if not candidates:
        return []
    fees = _normalize([float(c.estimated_fee) for c in candidates])
    latencies = _normalize([c.expected_latency_ms for c in candidates])
    order = list(BrokerName)
    scored = []
    for c, fee_n, lat_n in zip(candidates, fees, latencies, strict=True):
        cost_score, speed_score = 1.0 - fee_n, 1.0 - lat_n
        total = weights.cost * cost_score + weights.speed * speed_score + weights.fill * c.fill_score
        scored.append(
            (
                (-round(total, 12), c.priority, order.index(c.broker)),
                CandidateScore(
                    broker=c.broker,
                    estimated_fee=c.estimated_fee,
                    expected_latency_ms=c.expected_latency_ms,
                    fill_score=c.fill_score,
                    cost_score=round(cost_score, 6),
                    speed_score=round(speed_score, 6),
                    total=min(1.0, max(0.0, round(total, 6))),
                ),
            )
        )
    scored.sort(key=lambda pair: pair[0])
    return [s for _, s in scored]
