"""The shared rate budget with leases, on a real KV bucket: two replicas taking tokens as fast
as they can stay under the limit in every sliding window, and far from the limit they take
many tokens per round trip."""

from __future__ import annotations

import asyncio
import bisect
import time
import uuid

import pytest
from nats.aio.client import Client as NatsClient

from workers.domain.rates import RateLimit
from workers.executor.budget import RateBudget, RateBudgetExhausted


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
    budget.limit = RateLimit(requests=10_000, per_seconds=1.0)  # the limit was raised meanwhile
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
