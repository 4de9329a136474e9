"""Execution quality per broker, from the ``broker_execution_quality`` view, as the router's
fill score.

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


def fill_score(fill_rate: float, avg_slippage_bps: float | None) -> float:
    slippage = min(max(avg_slippage_bps or 0.0, 0.0), SLIPPAGE_CAP_BPS)
    return round(max(0.0, min(1.0, fill_rate * (1 - slippage / SLIPPAGE_CAP_BPS))), 6)


def _float(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)


async def measure(engine: AsyncEngine) -> list[FillQuality]:
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM broker_execution_quality"))).mappings().all()
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
