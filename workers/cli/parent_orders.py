"""Parent orders from `mbx submit`: the ``--split``, ``--twap``, ``--iceberg`` and ``--jitter`` flags
made into the intent's ``execution`` block, and the parent followed to its end through its
``ParentReport``s.

The flags' values are read here with a reason for anything malformed (``FlagError``); their
bounds (slices, duration, display quantity against the quantity) are the contract's, checked
when the intent is validated.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from contracts import OrderIntent, ParentReport, ParentStatus, Subjects
from contracts.messages import MAX_SPLIT_BROKERS
from workers.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    connect,
    console,
    err,
    is_connection_error,
    print_final,
    print_held,
    unreachable,
)

SPLIT_OPTION = "--split"
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?[smh])+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smh])")
_NEGATIVE_NUMBER = re.compile(r"-[0-9.]+")
_WHOLE = re.compile(r"[0-9]+")
FOLLOW_MARGIN_S = 60.0
"""Seconds a parent is followed beyond its TWAP's duration (its last slice still has to fill)."""
DEFAULT_FOLLOW_S = 15.0


class FlagError(ValueError):
    """A parent-order flag that cannot be read; the message says which and why."""


def with_split_value(argv: list[str]) -> list[str]:
    """``mbx submit ... --split`` without a number means up to every broker: the command line
    parser wants a value for every option, so a bare ``--split`` becomes ``--split=5`` here,
    before parsing. Only `mbx submit`'s arguments are touched."""
    if argv[:1] != ["submit"]:
        return argv
    out = []
    for position, token in enumerate(argv):
        following = argv[position + 1] if position + 1 < len(argv) else None
        bare = following is None or (following.startswith("-") and not _NEGATIVE_NUMBER.fullmatch(following))
        out.append(f"{SPLIT_OPTION}={MAX_SPLIT_BROKERS}" if token == SPLIT_OPTION and bare else token)
    return out


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1h30m`` or ``1.5h`` in seconds."""
    compact = text.strip().lower().replace(" ", "")
    if not _DURATION.fullmatch(compact):
        raise FlagError(f"{text!r} is not a duration: give a number with a unit, s, m or h (90s, 30m, 1h30m)")
    return sum(float(amount) * _UNIT_SECONDS[unit] for amount, unit in _DURATION_PART.findall(compact))


def parse_twap(text: str) -> tuple[float, int]:
    """``30m/10``: 10 slices over 30 minutes, as (seconds, slices)."""
    duration, sep, slices = text.partition("/")
    if not sep or not slices.strip():
        raise FlagError(f"--twap {text!r}: give duration/slices, e.g. 30m/10 (10 slices over 30 minutes)")
    try:
        seconds = parse_duration(duration)
    except FlagError as exc:
        raise FlagError(f"--twap {text!r}: {exc}") from None
    if not _WHOLE.fullmatch(slices.strip()):
        raise FlagError(f"--twap {text!r}: the number of slices, after the /, must be a whole number")
    return seconds, int(slices)


def parse_split(text: str) -> int:
    """The most brokers one slice may be spread over."""
    if not _WHOLE.fullmatch(text.strip()) or not 1 <= int(text) <= MAX_SPLIT_BROKERS:
        raise FlagError(
            f"--split {text!r}: give the most brokers a slice is spread over, 1 to {MAX_SPLIT_BROKERS} "
            f"(--split alone: up to {MAX_SPLIT_BROKERS})"
        )
    return int(text)


def parse_decimal(text: str, option: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise FlagError(f"{option} {text!r} is not a number") from None
    if not value.is_finite():
        raise FlagError(f"{option} {text!r} is not a number")
    return value


def parse_jitter(text: str) -> Decimal:
    """A percent of the slice interval: ``10`` or ``10%``."""
    return parse_decimal(text.strip().removesuffix("%"), "--jitter")


def execution_block(
    split: str | None = None, twap: str | None = None, iceberg: str | None = None, jitter: str | None = None
) -> dict[str, Any] | None:
    """The intent's ``execution`` block the flags describe (as wire JSON), or None without any."""
    if jitter is not None and twap is None:
        raise FlagError("--jitter moves TWAP slices: give it with --twap")
    block: dict[str, Any] = {}
    if split is not None:
        block["split"] = {"max_brokers": parse_split(split)}
    if twap is not None:
        seconds, slices = parse_twap(twap)
        block["twap"] = {"duration_s": seconds, "slices": slices}
        if jitter is not None:
            block["twap"]["jitter_pct"] = float(parse_jitter(jitter))
    if iceberg is not None:
        block["iceberg"] = {"display_quantity": str(parse_decimal(iceberg, "--iceberg"))}
    return block or None


def follow_seconds(intent: OrderIntent, timeout: float | None) -> float:
    """How long `mbx submit` waits for the end: ``--timeout`` when given; for a parent, its TWAP's
    duration and a minute more; else 15 s."""
    if timeout is not None:
        return timeout
    if intent.execution is not None and intent.execution.twap is not None:
        return intent.execution.twap.duration_s + FOLLOW_MARGIN_S
    return DEFAULT_FOLLOW_S + (FOLLOW_MARGIN_S if intent.execution is not None else 0.0)


# Following a parent ------------------------------------------------------------------------------


@dataclass
class ParentFollower:
    """The newest ``ParentReport`` of one parent (a later ``report_seq`` supersedes), whether the
    final one came, and what was last shown of it."""

    parent_intent_id: str
    latest: ParentReport | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    shown: tuple[str, Decimal, str] | None = field(default=None, init=False, repr=False)

    def take(self, report: ParentReport) -> bool:
        """Take ``report``; True when it is newer and changes what is shown (status, filled, children
        by broker). Another parent's report, or a stale one, changes nothing."""
        if report.intent_id != self.parent_intent_id:
            return False
        if self.latest is not None and report.report_seq <= self.latest.report_seq:
            return False
        self.latest = report
        if report.final or report.status.is_terminal:
            self.done.set()
        view = (str(report.status), report.filled_quantity, children_by_broker(report))
        if view == self.shown:
            return False
        self.shown = view
        return True


async def subscribe_parent(
    nc: Any, subjects: Subjects, parent_intent_id: str, strategy_id: str, on_news: Callable[[ParentReport], None]
) -> tuple[Any, ParentFollower]:
    """Follow one parent's reports on ``<prefix>.exec.parent.*.<strategy>`` (subscribe before
    submitting it, so none is missed); ``on_news(report)`` for each that changes what is shown."""
    follower = ParentFollower(parent_intent_id)

    async def handle(msg: Any) -> None:
        try:
            report = ParentReport.model_validate_json(msg.data)
        except ValueError:
            return  # not ours to judge: the aggregator dead-letters bad messages
        if follower.take(report):
            on_news(report)

    sub = await nc.subscribe(subjects.parent_report("*", strategy_id), cb=handle)
    return sub, follower


def progress_line(report: ParentReport) -> str:
    """``partially_filled: 4000 of 20000 (20%) @ 187.21; alpaca 2 (2000), ibkr 2 (2000), no broker: planned 6``."""
    share = report.filled_quantity / report.quantity * 100 if report.quantity else Decimal(0)
    average = f" @ {_n(report.average_price)}" if report.average_price is not None else ""
    return f"{report.status}: {_n(report.filled_quantity)} of {_n(report.quantity)} ({share:.0f}%){average}; " + (
        children_by_broker(report) or "no child yet"
    )


def children_by_broker(report: ParentReport) -> str:
    """Children per broker with what they filled (``alpaca 2 (2000)``), then those without a broker
    by status (``no broker: planned 6``)."""
    count: dict[str, int] = {}
    filled: dict[str, Decimal] = {}
    brokerless: dict[str, int] = {}
    for child in report.children:
        if child.broker is None:
            brokerless[child.status] = brokerless.get(child.status, 0) + 1
            continue
        name = str(child.broker)
        count[name] = count.get(name, 0) + 1
        filled[name] = filled.get(name, Decimal(0)) + child.filled_quantity
    parts = [f"{name} {count[name]} ({_n(filled[name])})" for name in sorted(count)]
    if brokerless:
        parts.append("no broker: " + ", ".join(f"{status} {n}" for status, n in sorted(brokerless.items())))
    return ", ".join(parts)


def final_line(report: ParentReport) -> tuple[str, bool]:
    """The parent's outcome in one line, and whether it counts as success (filled, or cancelled as asked)."""
    ok = report.status in (ParentStatus.FILLED, ParentStatus.CANCELLED)
    colour = "green" if report.status is ParentStatus.FILLED else "yellow" if ok else "red"
    average = f" @ {_n(report.average_price)}" if report.average_price is not None else ""
    arrival = f"arrival {_n(report.arrival_price)}" if report.arrival_price is not None else "no arrival price"
    slippage = f", slippage {report.slippage_bps:+.2f} bps" if report.slippage_bps is not None else ""
    line = (
        f"[{colour}]{report.status}[/{colour}]: {_n(report.filled_quantity)} of {_n(report.quantity)}{average} "
        f"({arrival}{slippage}); children: {children_by_broker(report) or 'none'}"
    )
    return line + (f" ({report.reason})" if report.reason else ""), ok


def cancelled_line(report: ParentReport) -> str:
    """What a parent's cancel ended with: what filled before it, and where."""
    return (
        f"[green]cancelled[/green] parent order {report.intent_id}: {_n(report.filled_quantity)} of "
        f"{_n(report.quantity)} filled before the cancel; children: {children_by_broker(report) or 'none'}"
    )


def _n(value: Decimal) -> str:
    return f"{value.normalize():f}" if value else "0"


async def submit_parent(intent: OrderIntent, url: str, prefix: str, timeout: float) -> int:
    """Submit a parent order and print its progress from its reports until the final one. An
    execution report that ends the intent itself (refused before any child was planned) ends
    the wait too, as does its hold for approval (the parent is held whole)."""
    from contracts.client import MbxClient, server_has_read  # noqa: PLC0415
    from workers.readmodel.parents import describe_execution  # noqa: PLC0415

    subjects = Subjects(prefix)
    nc = await connect(url)
    try:
        client = MbxClient(nc, subjects)
        tracker = await client.track(intent.intent_id, intent.strategy_id)
        sub, follower = await subscribe_parent(nc, subjects, intent.intent_id, intent.strategy_id, _print_progress)
        await server_has_read(nc)  # both subscriptions are in place before the intent goes out
        try:
            ack = await client.submit(intent)
            dup = " (duplicate: this intent id was already submitted)" if ack.duplicate else ""
            console.print(
                f"submitted parent order [bold]{intent.intent_id}[/bold] to {ack.stream} seq {ack.sequence}{dup}"
            )
            assert intent.execution is not None
            console.print(f"  {describe_execution(intent.execution.model_dump(mode='json'))}")
            ended = await _first_end(follower.done.wait(), tracker.wait_or_held(timeout), timeout)
        finally:
            await sub.unsubscribe()
            await tracker.close()
    except Exception as exc:
        if is_connection_error(exc):
            unreachable(url, exc)
        raise
    finally:
        await nc.close()
    if ended == "intent":
        final = tracker.terminal
        if final is not None:
            return print_final(final)
        assert tracker.held is not None  # held for approval before any child was planned
        print_held(tracker.held)
        return EXIT_OK
    report = follower.latest
    if ended is None or report is None:
        so_far = f" ({progress_line(report)})" if report is not None else ""
        err.print(
            f"[yellow]the parent order did not end within {timeout:g}s[/yellow]{so_far}; it may still be working: "
            f"mbx explain {intent.intent_id}"
        )
        return EXIT_FAILURE
    line, ok = final_line(report)
    console.print(line)
    console.print(f"[dim]every child, its broker and why: mbx explain {intent.intent_id}[/dim]")
    return EXIT_OK if ok else EXIT_FAILURE


def _print_progress(report: ParentReport) -> None:
    if not report.final:  # the final report is told once, as the outcome
        console.print(progress_line(report))


async def _first_end(parent_done: Any, intent_done: Any, timeout: float) -> str | None:
    """Which ended first: ``"parent"`` (its final report), ``"intent"`` (a final execution report
    of the intent itself), or None when neither did within ``timeout``."""
    tasks = {asyncio.ensure_future(parent_done): "parent", asyncio.ensure_future(intent_done): "intent"}
    done, pending = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    finished = [tasks[t] for t in done if not t.exception()]
    return "parent" if "parent" in finished else finished[0] if finished else None
