"""Position refreshes after fills: the first fill after a quiet spell is refreshed at once; fills
soon after a refresh share the next one, spaced so refreshes keep to their part of the rate budget."""

from __future__ import annotations

import time

import pytest

from contracts import BrokerName, PositionSnapshot
from tests.conftest import eventually
from workers.domain.rates import RateLimit
from workers.executor import app
from workers.executor.app import build_executor
from workers.platform.settings import Settings
from workers.venues.simulated.venue import SimulatedVenue

WINDOW = RateLimit(requests=10, per_seconds=1.0, share=1.0)
SPACING = 2 / WINDOW.rate / app.REFRESH_BUDGET_SHARE
"""Two requests a refresh, at most REFRESH_BUDGET_SHARE of 10 a second: one refresh per 2 s."""


async def test_a_fill_after_a_quiet_spell_is_refreshed_at_once_and_later_fills_wait_for_the_spacing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fill with no refresh in the last spacing is refreshed after REFRESH_DELAY; a burst of
    fills after that refresh shares one, which starts no sooner than the spacing after it."""
    monkeypatch.setattr(app, "REFRESH_DELAY", 0.01)
    venue = SimulatedVenue(BrokerName.ALPACA)
    executor = build_executor(Settings(nats_url="nats://127.0.0.1:1"), BrokerName.ALPACA, venue, (WINDOW,))
    started: list[float] = []

    async def publish_snapshot() -> PositionSnapshot:
        started.append(time.monotonic())
        return await executor.snapshot()

    monkeypatch.setattr(executor, "publish_snapshot", publish_snapshot)
    await venue.connect()

    async def refreshes(count: int) -> bool:
        return len(started) >= count

    quiet = time.monotonic()
    executor.refresh_positions_soon()
    await eventually(lambda: refreshes(1), timeout=SPACING)
    assert started[0] - quiet < SPACING / 2  # not held for the spacing: nothing was refreshed lately

    for _ in range(5):  # a burst of fills right after that refresh
        executor.refresh_positions_soon()
    await eventually(lambda: refreshes(2), timeout=3 * SPACING)
    assert started[1] - started[0] >= SPACING  # the budget's share: no sooner than the spacing
    assert len(started) == 2  # one refresh for the whole burst
