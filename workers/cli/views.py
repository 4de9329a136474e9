"""Read-only operator commands: ``mbx status``, ``mbx brokers``, ``mbx portfolio``, ``mbx tail``
(``mbx explain`` has its own module).

Registered on the ``mbx`` app by ``workers.cli``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Table

from contracts import BrokerStatus, Portfolio, Subjects
from workers.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    connect,
    console,
    err,
    fail,
    resolve_nats_url,
    settings_and_config,
)

app = typer.Typer()


def _age(moment: datetime) -> str:
    seconds = (datetime.now(UTC) - moment).total_seconds()
    return f"{seconds:.1f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def _broker_table(statuses: list[BrokerStatus], timeout: float) -> Table:
    from workers.ops.status import broker_state  # noqa: PLC0415

    colours = {"up": "green", "down": "red", "stale": "red"}
    table = Table(title="brokers")
    columns = ["broker", "state", "latency ms", "error rate", "rate headroom", "last heartbeat", "why down"]
    warned = any(s.warning for s in statuses)
    for column in [*columns, "warning"] if warned else columns:
        table.add_column(column)
    for s in statuses:
        state = broker_state(s, timeout)
        table.add_row(
            str(s.broker),
            f"[{colours[state]}]{state}[/{colours[state]}]",
            f"{s.latency_ms:.1f}",
            f"{s.error_rate:.0%}",
            f"{s.rate_limit_headroom:.0%}",
            _age(s.last_seen),
            "" if state == "up" else s.reason,
            *([f"[yellow]{s.warning}[/yellow]"] if warned else []),
        )
    return table


@app.command()
def status() -> None:
    """Stack health: every broker's heartbeat, consumer lag per stream, the aggregator's state.

    Example: mbx status
    """
    settings, config = settings_and_config()
    url = resolve_nats_url(settings)
    raise typer.Exit(asyncio.run(_status(url, settings.subjects, config.routing.heartbeat_timeout_s)))


async def _status(url: str, subjects: Subjects, heartbeat_timeout: float) -> int:
    from workers.ops.status import stack_status  # noqa: PLC0415

    nc = await connect(url)
    try:
        stack = await stack_status(nc.jetstream(), subjects)
    finally:
        await nc.close()
    console.print(f"NATS {url}: [green]reachable[/green]")
    if stack.brokers:
        console.print(_broker_table(stack.brokers, heartbeat_timeout))
    else:
        console.print("[yellow]no broker heartbeat yet[/yellow]: no executor has run")
    lag = Table(title="consumers")
    for column in ("stream", "consumer", "pending", "unacked", "redelivered"):
        lag.add_column(column)
    for c in stack.consumers:
        lag.add_row(c.stream, c.consumer, str(c.pending), str(c.unacked), str(c.redelivered))
    console.print(lag)
    if stack.never_started:
        console.print(f"[yellow]not created yet[/yellow] (worker never started): {', '.join(stack.never_started)}")
    if stack.aggregator:
        state = stack.aggregator
        colour = "green" if state["state"] == "ok" else "red"
        error = f": {state['error']}" if state.get("error") else ""
        console.print(f"aggregator: [{colour}]{state['state']}[/{colour}] since {state['since']}{error}")
    if stack.scrape:
        console.print("metrics (Prometheus): " + ", ".join(f"{worker} {url}" for worker, url in stack.scrape))
    else:
        console.print("metrics: not served (set MBX_METRICS_PORT for each worker, or run `mbx up`)")
    return EXIT_OK


@app.command()
def brokers() -> None:
    """Every broker's health as the router sees it (from the executors' heartbeats).

    Example: mbx brokers
    """
    settings, config = settings_and_config()
    url = resolve_nats_url(settings)

    async def show() -> int:
        from workers.ops.status import broker_statuses  # noqa: PLC0415

        nc = await connect(url)
        try:
            statuses = await broker_statuses(nc.jetstream(), settings.subjects)
        finally:
            await nc.close()
        if not statuses:
            console.print("[yellow]no broker heartbeat yet[/yellow]: start the executors (`make run`)")
            return EXIT_FAILURE
        console.print(_broker_table(statuses, config.routing.heartbeat_timeout_s))
        return EXIT_OK

    raise typer.Exit(asyncio.run(show()))


class PortfolioView(StrEnum):
    SYMBOL = "symbol"
    BROKER = "broker"


@app.command()
def portfolio(
    by: Annotated[PortfolioView, typer.Option(help="One row per symbol, or per broker.")] = PortfolioView.SYMBOL,
    sync: Annotated[bool, typer.Option("--sync", help="Ask every broker for a fresh snapshot first.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The Portfolio message as JSON.")] = False,
) -> None:
    """The unified portfolio across every broker (served by the aggregator).

    Example: mbx portfolio --by broker --sync
    """
    settings, _ = settings_and_config()
    url = resolve_nats_url(settings)

    async def fetch() -> Portfolio:
        nc = await connect(url)
        try:
            if sync:
                await nc.request(settings.subjects.api("portfolio.sync"), b"", timeout=15)
            reply = await nc.request(settings.subjects.api("portfolio.unified"), b"", timeout=10)
        except Exception as exc:  # noqa: BLE001  (no aggregator answering)
            fail(
                f"the aggregator did not answer on {settings.subjects.api('portfolio.unified')} ({type(exc).__name__})"
            )
        finally:
            await nc.close()
        data = json.loads(reply.data)
        if "error" in data:
            fail(f"the aggregator could not build the portfolio: {data['error']}")
        return Portfolio.model_validate(data)

    result = asyncio.run(fetch())
    if as_json:
        console.print_json(result.model_dump_json())
        raise typer.Exit(EXIT_OK)
    if by is PortfolioView.SYMBOL:
        table = Table(title="portfolio by symbol")
        for column in ("symbol", "quantity", "avg cost", "mark", "value", "unrealized", "realized", "brokers"):
            table.add_column(column, justify="left" if column in ("symbol", "brokers") else "right")
        for p in result.positions:
            table.add_row(
                p.symbol,
                f"{p.quantity.normalize():f}",
                f"{p.average_cost:.4f}" if p.average_cost is not None else "-",
                f"{p.market_price}" if p.market_price is not None else "-",
                f"{p.market_value:,.2f}",
                f"{p.unrealized_pnl:,.2f}",
                f"{p.realized_pnl:,.2f}",
                ", ".join(f"{b} {q.normalize():f}" for b, q in sorted(p.by_broker.items())),
            )
    else:
        value: dict[str, Decimal] = {}
        count: dict[str, int] = {}
        for p in result.positions:
            for broker, quantity in p.by_broker.items():
                share = p.market_value * quantity / p.quantity if p.quantity else Decimal(0)
                value[str(broker)] = value.get(str(broker), Decimal(0)) + share
                count[str(broker)] = count.get(str(broker), 0) + 1
        table = Table(title="portfolio by broker")
        for column in ("broker", "positions", "position value", "allocation"):
            table.add_column(column, justify="left" if column == "broker" else "right")
        shares = {str(b): pct for b, pct in result.allocation.items()}
        for name in sorted(set(value) | set(shares)):
            allocation = shares.get(name)
            table.add_row(
                name,
                str(count.get(name, 0)),
                f"{value.get(name, Decimal(0)):,.2f}",
                f"{allocation}%" if allocation is not None else "-",
            )
    console.print(table)
    console.print(
        f"portfolio value {result.portfolio_value:,.2f}  cash {result.cash:,.2f}  "
        f"unrealized {result.unrealized_pnl:,.2f}  realized {result.realized_pnl:,.2f}"
        + (f"  (snapshots as of {result.as_of:%Y-%m-%d %H:%M:%S})" if result.as_of else "")
    )
    raise typer.Exit(EXIT_OK)


class TailTopic(StrEnum):
    ROUTES = "routes"
    FILLS = "fills"
    FAILOVERS = "failovers"
    EXEC = "exec"
    DLQ = "dlq"


def _tail_subject(subjects: Subjects, topic: TailTopic) -> str:
    token = {"routes": "routes", "fills": "fills", "failovers": "failover", "exec": "exec", "dlq": "dlq"}[topic]
    return f"{subjects.prefix}.{token}.>"


def _line(topic: TailTopic, data: dict[str, Any]) -> str:
    """One readable line per message."""
    when = str(data.get("created_at", ""))[11:23]
    intent = data.get("intent_id") or data.get("correlation_id") or "-"
    if topic is TailTopic.ROUTES:
        chain = ",".join(data.get("fallback_chain", [])) or "none"
        return (
            f"{when} route  {intent} -> {data['broker']} (attempt {data['attempt']}, {data['rule']}) "
            f"{data['intent']['side']} {data['intent'].get('quantity') or data['intent'].get('notional')} "
            f"{data['intent']['symbol']}; fallback {chain}"
        )
    if topic is TailTopic.FILLS:
        return (
            f"{when} fill   {intent} {data['side']} {data['quantity']} {data['symbol']} @ {data['price']} "
            f"at {data['broker']} (fee {data['fee']})"
        )
    if topic is TailTopic.FAILOVERS:
        return f"{when} failover {intent} {data['failed_broker']} attempt {data['attempt']}: {data['reason_code']}"
    if topic is TailTopic.EXEC:
        if data.get("step"):  # an ApprovalEvent: the order is held for an operator's approval
            return f"{when} exec   {intent} router held for approval (rule {data.get('rule')})"
        status = data.get("status") or f"cancel rejected ({data.get('reason_code')})"
        return f"{when} exec   {intent} {data.get('broker') or 'router'} {status} {data.get('reason', '')}".rstrip()
    return f"{when} dlq    {data.get('stage')} {data.get('original_subject')}: {str(data.get('error', ''))[:160]}"


def _wanted(
    data: dict[str, Any], headers: dict[str, str], strategy: str | None, broker: str | None, symbol: str | None
) -> bool:
    from contracts import STRATEGY_ID_HEADER  # noqa: PLC0415

    if strategy and (headers.get(STRATEGY_ID_HEADER) or data.get("strategy_id")) != strategy:
        return False
    if broker and broker not in (data.get("broker"), data.get("failed_broker")):
        return False
    held = data.get("symbol") or (data.get("intent") or {}).get("symbol")
    return not (symbol and held != symbol.upper())


@app.command()
def tail(
    topic: Annotated[TailTopic, typer.Argument(help="routes, fills, failovers, exec or dlq.")],
    strategy: Annotated[str | None, typer.Option(help="Only this strategy.")] = None,
    broker: Annotated[str | None, typer.Option(help="Only this broker.")] = None,
    symbol: Annotated[str | None, typer.Option(help="Only this symbol.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON message per line, for scripts.")] = False,
    count: Annotated[int, typer.Option(help="Stop after this many messages (0: run until Ctrl-C).")] = 0,
    seconds: Annotated[float, typer.Option("--for", help="Stop after this many seconds (0: no limit).")] = 0,
) -> None:
    """Follow one kind of message live, as it happens.

    Example: mbx tail fills --strategy momo-1
             mbx tail routes --broker schwab --json | jq .rule
    """
    settings, _ = settings_and_config()
    url = resolve_nats_url(settings)
    subject = _tail_subject(settings.subjects, topic)

    async def follow() -> int:
        from contracts.client import server_has_read  # noqa: PLC0415

        nc = await connect(url)
        shown = 0
        done = asyncio.Event()

        async def on_message(msg: Any) -> None:
            nonlocal shown
            try:
                data = json.loads(msg.data)
            except ValueError:
                data = {"error": "not JSON", "original_subject": msg.subject}
            if not isinstance(data, dict) or not _wanted(data, dict(msg.headers or {}), strategy, broker, symbol):
                return
            print(json.dumps(data) if as_json else _line(topic, data), flush=True)
            shown += 1
            if count and shown >= count:
                done.set()

        sub = await nc.subscribe(subject, cb=on_message)
        await server_has_read(nc)  # the subscription is in place: nothing published from now on is missed
        err.print(f"[dim]following {subject} on {url} (Ctrl-C to stop)[/dim]")
        try:
            with contextlib.suppress(TimeoutError):  # --for elapsed
                await asyncio.wait_for(done.wait(), seconds or None)
        finally:
            await sub.unsubscribe()
            await nc.close()
        return EXIT_OK

    raise typer.Exit(asyncio.run(follow()))
