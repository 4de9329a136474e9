"""The shared rate budget with leases, on a real KV bucket: two replicas taking tokens as fast
as they can stay under the limit in every sliding window (of every window the broker holds),
far from the limit they take many tokens per round trip, a 429 to any request stops them all
until the reset, and a budget refusal spends no daily order call."""

from __future__ import annotations

import asyncio
import bisect
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from nats.aio.client import Client as NatsClient

from tests.builders import make_intent
from tests.fakes.alpaca import FakeAlpaca
from workers.domain.rates import RateLimit
from workers.domain.venue import VenueRateLimited, VenueUnavailable
from workers.executor.budget import DailyOrderBudget, RateBudget, RateBudgetExhausted
from workers.venues.alpaca.venue import AlpacaVenue


async def _drain(budget: RateBudget, until: float, spent: list[float]) -> None:
    while time.time() < until:
        await budget.take()
        spent.append(time.time())


async def test_leased_tokens_keep_two_replicas_under_the_limit_in_every_window(nc: NatsClient) -> None:
    limit = RateLimit(requests=600, per_seconds=1.0)  # 0.9 share: at most 540 in any second
    assert limit.lease > 1
    bucket, key = f"budget_{uuid.uuid4().hex[:8]}", "ibkr"
    replicas = [RateBudget(nc.jetstream, bucket, key, limit) for _ in range(2)]
    spent: list[float] = []
    until = time.time() + 3.0
    await asyncio.gather(*(_drain(b, until, spent) for b in replicas))

    spent.sort()
    busiest = max(bisect.bisect_left(spent, t + limit.per_seconds) - k for k, t in enumerate(spent))
    assert busiest <= limit.share * limit.requests
    assert busiest >= 0.5 * limit.share * limit.requests  # the budget, not the test, was the limit
    assert all(b.waited > 0 for b in replicas)
    await nc.jetstream().delete_key_value(bucket)


async def test_a_budget_far_from_its_limit_takes_tokens_in_leases(nc: NatsClient) -> None:
    limit = RateLimit(requests=100_000, per_seconds=1.0)
    bucket, key = f"budget_{uuid.uuid4().hex[:8]}", "alpaca"
    replicas = [RateBudget(nc.jetstream, bucket, key, limit) for _ in range(2)]
    spent: list[float] = []
    await asyncio.gather(*(_drain(b, time.time() + 1.0, spent) for b in replicas))

    kv = await nc.jetstream().key_value(bucket)
    writes = (await kv.get(key)).revision
    assert len(spent) > 10 * writes  # many tokens per compare-and-set round trip
    assert all(b.waited == 0 for b in replicas)
    await nc.jetstream().delete_key_value(bucket)


async def test_a_caller_waits_a_bounded_time_and_never_blocks_the_others_while_it_waits(nc: NatsClient) -> None:
    """With the budget spent, a caller gives up after its timeout (nothing sent), and a caller
    that is waiting does not hold the others back once tokens are there again."""
    bucket = f"budget_{uuid.uuid4().hex[:8]}"
    budget = RateBudget(nc.jetstream, bucket, "schwab", RateLimit(requests=1, per_seconds=60.0))
    await budget.take()
    started = time.monotonic()
    with pytest.raises(RateBudgetExhausted, match="not sent"):
        await budget.take(timeout=0.5)
    assert time.monotonic() - started < 2.0
    slow = asyncio.create_task(budget.take(timeout=120))  # sleeps about a minute for its token
    await asyncio.sleep(0.2)
    budget.limits = (RateLimit(requests=10_000, per_seconds=1.0),)  # the limit was raised meanwhile
    await asyncio.wait_for(budget.take(timeout=5), 3.0)
    slow.cancel()
    await nc.jetstream().delete_key_value(bucket)


async def test_requests_waiting_for_a_token_count_against_the_headroom(nc: NatsClient) -> None:
    """Robinhood's 32 a minute: two requests granted leave most of the five-second load window,
    but with ten more waiting for their tokens the broker has no headroom left, and reports it
    while they wait (granted tokens alone made a saturated broker look free between grants)."""
    bucket = f"budget_{uuid.uuid4().hex[:8]}"
    budget = RateBudget(nc.jetstream, bucket, "robinhood", RateLimit(requests=32, per_seconds=60.0))
    await budget.take()
    granted_only = await budget.headroom()
    assert granted_only > 0.3
    queue = [asyncio.create_task(budget.take(timeout=120)) for _ in range(10)]
    await asyncio.sleep(0.3)
    assert budget.waiting >= 9
    assert await budget.headroom() == 0.0
    for waiter in queue:
        waiter.cancel()
    await asyncio.gather(*queue, return_exceptions=True)
    assert budget.waiting == 0
    assert await budget.headroom() > 0.3
    await nc.jetstream().delete_key_value(bucket)


def _busiest(spent: list[float], per_seconds: float) -> int:
    """Most tokens spent in any window of ``per_seconds``."""
    spent = sorted(spent)
    return max(bisect.bisect_left(spent, t + per_seconds) - k for k, t in enumerate(spent))


@pytest.mark.parametrize(
    ("windows", "binding", "run_s"),
    [
        # 30 a second with 1,800 a minute (Coinbase's shape): the minute window alone would
        # let a burst of 81 through at once.
        ((RateLimit(requests=10, per_seconds=1.0), RateLimit(requests=400, per_seconds=60.0)), 0, 2.5),
        # A generous second with a tight three seconds: the second window alone would let
        # hundreds through.
        ((RateLimit(requests=1000, per_seconds=1.0), RateLimit(requests=20, per_seconds=3.0)), 1, 4.0),
    ],
)
async def test_two_windows_are_each_enforced_across_replicas(
    nc: NatsClient, windows: tuple[RateLimit, ...], binding: int, run_s: float
) -> None:
    """A budget with two windows keeps two replicas under both: in any span of either window
    they spend at most its share, whichever window is the tighter one."""
    bucket = f"budget_{uuid.uuid4().hex[:8]}"
    replicas = [RateBudget(nc.jetstream, bucket, "coinbase", windows) for _ in range(2)]
    spent: list[float] = []
    await asyncio.gather(*(_drain(b, time.time() + run_s, spent) for b in replicas))

    for window in windows:
        assert _busiest(spent, window.per_seconds) <= window.share * window.requests
    tight = windows[binding]
    assert _busiest(spent, tight.per_seconds) >= 0.5 * tight.share * tight.requests  # the budget was the limit
    await nc.jetstream().delete_key_value(bucket)


async def test_a_429_to_a_look_up_blocks_the_budget_of_every_replica_until_the_reset(nc: NatsClient) -> None:
    """Alpaca answers a look-up by client order id with 429: the adapter tells the budget, and
    another replica's next request is refused at once as not sent (a ``VenueUnavailable``
    carrying the wait), until the broker's reset time."""
    bucket = f"budget_{uuid.uuid4().hex[:8]}"
    replicas = [RateBudget(nc.jetstream, bucket, "alpaca", RateLimit(requests=200, per_seconds=60.0)) for _ in range(2)]
    fake = FakeAlpaca()
    venue = AlpacaVenue(fake.key_id, fake.secret_key, transport=httpx.MockTransport(fake.handle))
    venue.use_gate(replicas[0])
    await venue.connect()
    reset_at = time.time() + 3.0
    fake.switch_faults({"rate_limited_next": 1})
    intent = make_intent()
    with pytest.raises(VenueRateLimited):
        await venue.locate(intent, intent.intent_id, datetime.now(UTC))

    with pytest.raises(RateBudgetExhausted) as refused:
        await replicas[1].take(timeout=0.2)
    assert isinstance(refused.value, VenueUnavailable)
    assert refused.value.retry_after >= 0.5
    assert time.time() + await replicas[1].until_token() <= reset_at
    await replicas[1].take(timeout=5.0)  # after the reset, requests go again
    await venue.disconnect()
    await nc.jetstream().delete_key_value(bucket)


async def test_a_budget_refusal_spends_no_daily_order_call(nc: NatsClient) -> None:
    """An order call the rate budget refuses before anything is sent is given back to the day's
    count; one refused after a request went out (a read after the order) stays spent."""
    bucket = f"budget_{uuid.uuid4().hex[:8]}"
    budget = RateBudget(nc.jetstream, bucket, "schwab", RateLimit(requests=2, per_seconds=60.0))
    daily = DailyOrderBudget(nc.jetstream, bucket, "schwab", 10)
    day_key = f"schwab.orders.{time.strftime('%Y%m%d', time.gmtime())}"

    async def used() -> int:
        kv = await nc.jetstream().key_value(bucket)
        return int((await kv.get(day_key)).value or b"0")

    async with daily.order_call(budget, placement=True):
        await budget.take(timeout=0.1)  # the placement's request
    assert await used() == 1
    for _ in range(3):
        with pytest.raises(RateBudgetExhausted):
            async with daily.order_call(budget, placement=True):
                await budget.take(timeout=0.1)  # no token: nothing sent
    assert await used() == 1

    sent = RateBudget(nc.jetstream, bucket, "schwab-cancels", RateLimit(requests=1000, per_seconds=1.0))
    with pytest.raises(RateBudgetExhausted):
        async with daily.order_call(budget, placement=False):
            await sent.take(timeout=1.0)  # the cancel went out
            await budget.take(timeout=0.1)  # the read after it did not
    assert await used() == 2
    await nc.jetstream().delete_key_value(bucket)
