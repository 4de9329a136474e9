"""What splitting a large order saves, with the simulator's market impact on (issue 30).

On an embedded stack of its own (every worker a process, the parent-order worker included;
simulated brokers with ``simulation.impact`` on, paper cash ample for millions of USD, and
``max_broker_allocation: 1`` so one broker may take the whole order), one strategy buys N shares
(default 20,000) three ways, one after the other:

1. **single**: one plain intent, routed whole to the default broker;
2. **split**: one parent with ``execution.split``: one slice shared across the equity brokers;
3. **twap+split**: one parent with ``twap`` (test-scaled: 10 slices over 20 s) and ``split``.

Each buys a symbol of its own, so no run pays for the price another one moved (the impact model
keeps one book per broker and symbol). Reported per run: cost in basis points against the
arrival price (the reference mid the router priced the order at; a parent's ``arrival_price``),
quantity per broker, time from publish to the last fill, and the ratios against the single
order measured in the same run. For the parent-order worker: its CPU per child, beside the
router's CPU per routed child in the same window (both include the idle work of the window:
heartbeats and KV watches), and for the TWAP how late each slice's first child was stored after
the slice fell due.

The book's recovery half-life is scaled with the duration (5 s instead of 60 s), so a 20-second
TWAP sees the recovery a 30-minute one would at the default. Figures are the model's, not a
market's: they show what the code does with the model, not what a broker would charge.

Run with `make bench` (or `python -m bench.parents [N]`); results go to bench/results/parents.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

from bench.pipeline_bench import Stack
from bench.report import publish, sizes
from contracts import ExecutionReport, OrderStatus, ParentReport, Subjects
from tests.builders import intent_payload
from workers.devstack.processes import spawn
from workers.platform.bus import read_stream, stored_at
from workers.platform.settings import Settings
from workers.venues.simulated.quotes import QuoteModel

STRATEGY = "bench-parents"
EQUITY_BROKERS = ("alpaca", "robinhood", "schwab", "ibkr")
"""The brokers that trade equities in the simulator (Coinbase is crypto only)."""
SYMBOLS = {"single": "AAPL", "split": "MSFT", "twap+split": "NVDA"}
"""One symbol per run, so each starts from an undisturbed book."""
RECOVERY_S = 5.0
DONE_S = 300.0
"""Longest a run may take before the benchmark gives up on it."""
TERMINAL = {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.FAILED}


def stack_config(recovery_s: float = RECOVERY_S) -> str:
    """Every equity broker unthrottled, with ample cash; impact on; loose allocation limits."""
    brokers = "".join(
        f"  {b}:\n    rate_limit: {{requests: 1000000, per_seconds: 1}}\n    paper_cash: 1000000000000\n"
        for b in EQUITY_BROKERS
    )
    return (
        f"brokers:\n{brokers}"
        "risk:\n  min_broker_diversification: 1\n  max_broker_allocation: 1\n"
        f"simulation:\n  impact:\n    enabled: true\n    recovery_s: {recovery_s}\n"
    )


@dataclass
class Outcome:
    """One way of buying the quantity, as measured."""

    name: str
    cost_bps: float
    seconds: float
    by_broker: dict[str, Decimal]
    children: int = 1
    cpu_s: dict[str, float] = field(default_factory=dict)
    slice_lag_ms: list[float] = field(default_factory=list)


class Runner:
    """Publishes one order and follows it to its end on the stack's NATS."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.subjects = Subjects(Settings(nats_url=url).subject_prefix)
        self.seen: list[Msg] = []

    async def __aenter__(self) -> Runner:
        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream()
        self.sub = await self.nc.subscribe(f"{self.subjects.prefix}.exec.>", cb=self._seen)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.nc.close()

    async def _seen(self, msg: Msg) -> None:
        self.seen.append(msg)

    async def publish(self, payload: dict[str, Any]) -> float:
        await self.js.publish(
            self.subjects.intent(STRATEGY), json.dumps(payload).encode(), headers={"Nats-Msg-Id": payload["intent_id"]}
        )
        return time.perf_counter()

    async def until(self, found: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + DONE_S
        while time.monotonic() < deadline:
            if (hit := found()) is not None:
                return hit
            await asyncio.sleep(0.05)
        raise TimeoutError("the order did not end in time; see the stack's logs")

    def final_report(self, intent_id: str) -> ExecutionReport | None:
        for msg in self.seen:
            if self.subjects.is_parent_report(msg.subject):
                continue
            with contextlib.suppress(ValueError):
                report = ExecutionReport.model_validate_json(msg.data)
                if report.intent_id == intent_id and report.status in TERMINAL:
                    return report
        return None

    def final_parent(self, intent_id: str) -> ParentReport | None:
        for msg in self.seen:
            if self.subjects.is_parent_report(msg.subject):
                report = ParentReport.model_validate_json(msg.data)
                if report.intent_id == intent_id and report.final:
                    return report
        return None

    async def slice_lags(self, parent: ParentReport, duration_s: float, slices: int) -> list[float]:
        """Per slice: ms from its due time (arrival + k * interval) to its first child's storing."""
        stream = self.subjects.stream_name("ORDERS")
        [arrived] = [
            stored_at(msg)
            for msg in await read_stream(self.js, stream, self.subjects.parent_intent(STRATEGY))
            if json.loads(msg.data)["intent_id"] == parent.intent_id
        ]
        stored: dict[str, datetime] = {}
        for msg in await read_stream(self.js, stream, self.subjects.intent(STRATEGY)):
            at = stored_at(msg)
            if at is not None:
                stored[json.loads(msg.data)["intent_id"]] = at
        first: dict[int, datetime] = {}
        for child in parent.children:
            at = stored.get(child.intent_id)
            if at is not None and (child.slice_number not in first or at < first[child.slice_number]):
                first[child.slice_number] = at
        assert arrived is not None
        interval = timedelta(seconds=duration_s / slices)
        return [(at - (arrived + k * interval)).total_seconds() * 1000 for k, at in sorted(first.items())]


def bps(price: Decimal, arrival: Decimal) -> float:
    return float((price - arrival) / arrival * 10_000)


async def single(runner: Runner, quantity: int) -> Outcome:
    symbol = SYMBOLS["single"]
    arrival = QuoteModel().mid(symbol)  # the router's reference mid: impact moves only the brokers' books
    payload = intent_payload(intent_id="bench-single", strategy_id=STRATEGY, symbol=symbol, quantity=str(quantity))
    sent = await runner.publish(payload)
    report: ExecutionReport = await runner.until(lambda: runner.final_report(payload["intent_id"]))
    took = time.perf_counter() - sent
    if report.status is not OrderStatus.FILLED or report.average_price is None or report.broker is None:
        raise RuntimeError(f"the single order ended {report.status}: {report.reason}")
    return Outcome("single", bps(report.average_price, arrival), took, {str(report.broker): report.filled_quantity})


async def parent(runner: Runner, name: str, quantity: int, execution: dict[str, Any]) -> Outcome:
    symbol = SYMBOLS[name]
    intent_id = f"bench-{name.replace('+', '-')}"
    payload = intent_payload(
        intent_id=intent_id, strategy_id=STRATEGY, symbol=symbol, quantity=str(quantity), execution=execution
    )
    sent = await runner.publish(payload)
    report: ParentReport = await runner.until(lambda: runner.final_parent(intent_id))
    took = time.perf_counter() - sent
    if report.average_price is None or report.filled_quantity != quantity:
        raise RuntimeError(f"the {name} parent ended {report.status} with {report.filled_quantity}: {report.reason}")
    arrival = report.arrival_price or QuoteModel().mid(symbol)
    by_broker: dict[str, Decimal] = {}
    for child in report.children:
        key = str(child.broker)
        by_broker[key] = by_broker.get(key, Decimal(0)) + child.filled_quantity
    outcome = Outcome(name, bps(report.average_price, arrival), took, by_broker, children=len(report.children))
    twap = execution.get("twap")
    if twap:
        outcome.slice_lag_ms = await runner.slice_lags(report, twap["duration_s"], twap["slices"])
    return outcome


def start_parents_worker(stack: Stack) -> None:
    """The parent-order worker, as `mbx up` runs it, beside the stack's other workers."""
    config = stack.root / "bench.yaml"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MBX_")}
    environ |= {
        "MBX_NATS_URL": stack.nats.url,
        "MBX_DATABASE_URL": stack.postgres.url(),
        "MBX_CONFIG_FILE": str(config),
        "MBX_LOG_LEVEL": "WARNING",
        "MBX_LOG_FORMAT": "json",
    }
    stack.workers["parents"] = spawn(
        [sys.executable, "-m", "workers", "worker", "parents"], stack.root / "logs" / "parents.log", env=environ
    )
    asyncio.run(_parents_ready(stack.nats.url))


async def _parents_ready(url: str) -> None:
    spec = Settings(nats_url=url).topology.parents_consumer()
    nc = await nats.connect(url)
    js = nc.jetstream()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if (await js.consumer_info(spec.stream, spec.durable)).num_waiting > 0:
                    return
            await asyncio.sleep(0.2)
    finally:
        await nc.close()
    raise RuntimeError("the parent-order worker did not start")


def measured(stack: Stack, run: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    before = stack.cpu()
    outcome = asyncio.run(run())
    after = stack.cpu()
    return outcome, {name: after[name] - before.get(name, 0.0) for name in after}


def run(
    quantity: int = 20_000,
    twap_s: float = 20.0,
    slices: int = 10,
    progress: Callable[[str], None] = print,
) -> tuple[dict[str, float], list[Outcome]]:
    """Buy ``quantity`` three ways on a fresh stack; the flat results and each run's outcome."""
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="mbx-bench-parents-") as tmp:
        stack = Stack(Path(tmp), sync_always=False, config=stack_config())
        stack.start()
        try:
            start_parents_worker(stack)
            url = stack.nats.url
            split = {"split": {"max_brokers": len(EQUITY_BROKERS)}}
            twap = {"twap": {"duration_s": twap_s, "slices": slices}} | split
            ways: list[tuple[str, Callable[[Runner], Any]]] = [
                ("single", lambda r: single(r, quantity)),
                ("split", lambda r: parent(r, "split", quantity, split)),
                ("twap+split", lambda r: parent(r, "twap+split", quantity, twap)),
            ]
            for name, way in ways:
                progress(f"buying {quantity:,} shares: {name}")

                async def one(way: Callable[[Runner], Any] = way) -> Outcome:
                    async with Runner(url) as runner:
                        result: Outcome = await way(runner)
                        return result

                outcome, cpu = measured(stack, one)
                outcome.cpu_s = cpu
                outcomes.append(outcome)
        finally:
            stack.stop()
    return flatten(outcomes), outcomes


def flatten(outcomes: list[Outcome]) -> dict[str, float]:
    base = outcomes[0]
    out: dict[str, float] = {}
    for o in outcomes:
        key = o.name.replace("+", "_")
        out[f"{key}_cost_bps"] = round(o.cost_bps, 2)
        out[f"{key}_seconds"] = round(o.seconds, 2)
        out[f"{key}_brokers"] = len([q for q in o.by_broker.values() if q > 0])
        out[f"{key}_largest_broker_share"] = round(float(max(o.by_broker.values()) / sum(o.by_broker.values())), 3)
        out[f"{key}_children"] = o.children
        if o is not base:
            out[f"{key}_cost_ratio_to_single"] = round(o.cost_bps / base.cost_bps, 3) if base.cost_bps else 0.0
            out[f"{key}_time_ratio_to_single"] = round(o.seconds / base.seconds, 2)
            per_child = {w: o.cpu_s.get(w, 0.0) * 1000 / o.children for w in ("parents", "router")}
            out[f"{key}_parents_cpu_ms_per_child"] = round(per_child["parents"], 2)
            out[f"{key}_router_cpu_ms_per_child"] = round(per_child["router"], 2)
            if per_child["router"]:
                out[f"{key}_parents_to_router_cpu_per_child"] = round(per_child["parents"] / per_child["router"], 2)
        if o.slice_lag_ms:
            out[f"{key}_slice_lag_ms_p50"] = round(statistics.median(o.slice_lag_ms), 1)
            out[f"{key}_slice_lag_ms_max"] = round(max(o.slice_lag_ms), 1)
    out["single_router_cpu_ms"] = round(base.cpu_s.get("router", 0.0) * 1000, 2)
    return out


def table(outcomes: list[Outcome]) -> str:
    """The markdown table docs/routing.md carries."""
    base = outcomes[0]
    rows = [
        "| way | cost vs arrival (bps) | cost ratio | per-broker quantity | children | time to fill (s) | time ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        brokers = ", ".join(f"{b} {q:,.0f}" for b, q in sorted(o.by_broker.items()) if q > 0)
        ratio = f"{o.cost_bps / base.cost_bps:.2f}" if base.cost_bps else "-"
        rows.append(
            f"| {o.name} | {o.cost_bps:.2f} | {ratio} | {brokers} | {o.children} | {o.seconds:.1f} "
            f"| {o.seconds / base.seconds:.1f} |"
        )
    return "\n".join(rows)


def main() -> None:
    (quantity,) = sizes("bench.parents", __doc__, ("quantity", 20_000, "shares to buy each way"))
    results, outcomes = run(quantity)
    publish(f"Parent orders: buying {quantity:,} shares with market impact on", "parents", results)
    print()
    print(table(outcomes))


if __name__ == "__main__":
    main()
