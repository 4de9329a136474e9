"""Execution quality per broker over its latest ``RECENT_ORDERS`` orders (the measures of the
``broker_execution_quality`` view), as the router's fill score.

    fill_score = fill_rate * (1 - min(max(avg_slippage_bps, 0), SLIPPAGE_CAP_BPS) / SLIPPAGE_CAP_BPS)

A broker that fills everything at the decision-time price scores 1; rejections and failures
lower it in proportion, and slippage against us lowers it linearly until ``SLIPPAGE_CAP_BPS``,
where it reaches 0. Price improvement (negative slippage) does not raise it above the fill rate.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import BrokerName, FillQuality

SLIPPAGE_CAP_BPS = 50.0
RECENT_ORDERS = 1000
"""Orders per broker the fill score is measured over (the latest, by decision time)."""


def fill_score(fill_rate: float, avg_slippage_bps: float | None) -> float:
    slippage = min(max(avg_slippage_bps or 0.0, 0.0), SLIPPAGE_CAP_BPS)
    return round(max(0.0, min(1.0, fill_rate * (1 - slippage / SLIPPAGE_CAP_BPS))), 6)


def _float(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)


async def measure(engine: AsyncEngine, per_broker: int = RECENT_ORDERS) -> list[FillQuality]:
    """Each broker's quality over its latest ``per_broker`` orders (``recent_execution_quality``,
    migration 0007): recent behaviour, at a cost that does not grow with the audit trail."""
    async with engine.connect() as conn:
        rows = (
            (
                await conn.execute(
                    text("SELECT * FROM recent_execution_quality(CAST(:brokers AS text[]), :n)"),
                    {"brokers": [str(b) for b in BrokerName], "n": per_broker},
                )
            )
            .mappings()
            .all()
        )
    out = []
    for r in rows:
        rate = float(r["fill_rate"])
        out.append(
            FillQuality(
                correlation_id=r["broker_name"],
                broker=BrokerName(r["broker_name"]),
                fill_score=fill_score(rate, _float(r["avg_slippage_bps"])),
                samples=int(r["orders"]),
                fill_rate=rate,
                reject_rate=float(r["reject_rate"]),
                avg_slippage_bps=_float(r["avg_slippage_bps"]),
                latency_p50_ms=_float(r["latency_p50_ms"]),
                latency_p99_ms=_float(r["latency_p99_ms"]),
                fees_paid=r["fees_paid"],
            )
        )
    return out
