"""One classification of a failed delivery: poison is dead-lettered at once, a condition that
passes waits until it is ready again and is never counted, an unknown outcome is looked at
again and never counted, and only a defect is counted toward a dead letter."""

from __future__ import annotations

from decimal import InvalidOperation

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError

from workers.domain.venue import VenueAmbiguous, VenueAuthFailed, VenueRateLimited, VenueUnavailable
from workers.executor.budget import DailyOrdersSpent
from workers.executor.handlers import OutcomeUnknown, failover_wait
from workers.platform.runtime import (
    MAX_WAIT_S,
    PoisonMessage,
    RetryLater,
    StillPending,
    Verdict,
    disposition,
)

DELIVERIES = st.integers(min_value=1, max_value=10_000)


@given(DELIVERIES)
def test_poison_and_deterministic_errors_are_dead_lettered_at_any_delivery(deliveries: int) -> None:
    """A message that can never succeed leaves at once, whatever its delivery."""
    for exc in (PoisonMessage("invalid OrderIntent"), InvalidOperation(), UnicodeDecodeError("utf-8", b"", 0, 1, "x")):
        assert disposition(exc, deliveries).verdict is Verdict.POISON


@given(DELIVERIES, st.floats(min_value=0.01, max_value=3600))
def test_a_429_waits_for_its_reset_bounded_never_counted(deliveries: int, reset: float) -> None:
    """A broker's 429 waits until its reset (at most MAX_WAIT_S), never toward a dead letter."""
    verdict = disposition(VenueRateLimited("429", retry_after=reset), deliveries)
    assert verdict.verdict is Verdict.WAIT
    assert verdict.delay == pytest.approx(min(max(reset, 0.05), MAX_WAIT_S))


@pytest.mark.parametrize(
    "exc",
    [
        VenueUnavailable("connection refused"),
        VenueAuthFailed("401"),
        DailyOrdersSpent("spent", 3600),
        RetryLater("not routed yet", 1.0),
        NoStreamResponseError(),
        NatsTimeoutError(),
        TimeoutError("alpaca did not answer within 10s"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_broker_and_bus_conditions_wait_and_are_never_counted(exc: Exception) -> None:
    """Outages, expired keys, the day's order calls, elections and deadlines wait: the verdict
    is the same at the thousandth delivery as at the first."""
    assert disposition(exc, 1).verdict is Verdict.WAIT
    assert disposition(exc, 1000).verdict is Verdict.WAIT
    assert 0 < disposition(exc, 1000).delay <= MAX_WAIT_S


@pytest.mark.parametrize(
    "exc", [OutcomeUnknown("may exist"), StillPending("waiting"), VenueAmbiguous("5xx to POST")], ids=str
)
def test_an_unknown_outcome_is_looked_at_again_never_counted(exc: Exception) -> None:
    assert disposition(exc, 1000).verdict is Verdict.LOOK


def test_only_a_defect_is_counted() -> None:
    assert disposition(KeyError("x"), 3).verdict is Verdict.UNEXPECTED


def test_a_route_fails_over_only_when_its_wait_exceeds_the_bound() -> None:
    """A 429 whose reset is 58 s away fails over at once past a 2 s bound; a 1 s one waits; a
    broker down with no known end fails over once the route has waited past the bound; the
    day's order calls fail over whatever the bound; null never fails over for a wait."""
    assert failover_wait(0.0, 58.0, 2.0, "rate_limited") is not None
    assert failover_wait(0.0, 1.0, 2.0, "rate_limited") is None
    assert failover_wait(1.5, 0.0, 2.0, "broker_down") is None
    assert failover_wait(2.5, 0.0, 2.0, "broker_down") is not None
    assert failover_wait(0.0, 3600.0, None, "rate_limited") is None
    assert failover_wait(0.0, 3600.0, None, "daily_order_cap") is not None


def test_a_route_with_nowhere_else_to_go_waits_whatever_the_condition() -> None:
    """Without a broker left in its fallback chain (a strategy that named its broker) a failover
    could only reject the order: a condition that passes delays it instead."""
    for code in ("rate_limited", "broker_down", "daily_order_cap"):
        assert failover_wait(60.0, 58.0, 2.0, code, elsewhere=False) is None
