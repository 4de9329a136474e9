"""`mbx submit` and `mbx cancel`: sending intents and cancel requests as a strategy would.

A parent order (``--split``, ``--twap``, ``--iceberg``) is followed through its parent reports
(``parent_orders``)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from contracts import (
    ApprovalEvent,
    AssetClass,
    BrokerName,
    CancelReject,
    CancelRequest,
    ExecutionReport,
    OrderIntent,
    OrderType,
    ParentReport,
    Side,
    Subjects,
    TimeInForce,
)
from workers.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    client_options,
    connect,
    console,
    decimal_option,
    err,
    fail,
    is_connection_error,
    print_final,
    print_held,
    print_route,
    read_intent_file,
    resolve_nats_url,
    settings_and_config,
    unreachable,
    validation_problems,
)
from workers.cli.parent_orders import (
    DEFAULT_FOLLOW_S,
    FlagError,
    cancelled_line,
    execution_block,
    follow_seconds,
    submit_parent,
)
from workers.domain.instruments import asset_class_of

app = typer.Typer()


@app.command()
def submit(
    symbol: Annotated[str | None, typer.Option(help="Symbol, e.g. AAPL or BTC-USD.")] = None,
    quantity: Annotated[str | None, typer.Option(help="Units (fractional allowed).")] = None,
    notional: Annotated[str | None, typer.Option(help="Dollar amount instead of a quantity.")] = None,
    side: Annotated[Side, typer.Option(help="buy or sell.")] = Side.BUY,
    asset_class: Annotated[
        AssetClass | None,
        typer.Option(
            help="equity, crypto or option (default: from the symbol: BTC-USD crypto, OCC option, else equity)."
        ),
    ] = None,
    order_type: Annotated[
        OrderType | None,
        typer.Option(
            help="market, limit, stop, stop_limit (default: from the prices given: --limit-price limit, "
            "--stop-price stop, both stop_limit, neither market)."
        ),
    ] = None,
    limit_price: Annotated[str | None, typer.Option(help="Limit price.")] = None,
    stop_price: Annotated[str | None, typer.Option(help="Stop price.")] = None,
    tif: Annotated[TimeInForce | None, typer.Option(help="day, gtc, ioc, fok (default day; gtc for crypto).")] = None,
    broker: Annotated[BrokerName | None, typer.Option(help="Preferred broker.")] = None,
    strategy: Annotated[str, typer.Option(help="Strategy id the order is sent as.")] = "cli",
    intent_id: Annotated[str | None, typer.Option(help="Intent id (default: generated).")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Read the intent from a JSON or YAML file.")] = None,
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="Submit one intent per row of a CSV file (header: intent fields).")
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            metavar="[N]",
            help="A parent order split across brokers: each slice over up to N brokers (1 to 5); "
            "--split alone: up to 5.",
        ),
    ] = None,
    twap: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION/SLICES",
            help="A parent order sliced over time: e.g. 30m/10, 10 equal slices over 30 minutes "
            "(duration in s, m or h: 90s, 30m, 1h30m).",
        ),
    ] = None,
    iceberg: Annotated[
        str | None,
        typer.Option(metavar="QUANTITY", help="A parent order showing only QUANTITY at a time."),
    ] = None,
    jitter: Annotated[
        str | None,
        typer.Option(metavar="PCT", help="With --twap: move each slice by up to PCT% of the interval (0 to 50)."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds to wait for the final report (default 15; a parent order: its TWAP's duration "
            "plus 60, else 75)."
        ),
    ] = None,
) -> None:
    """Send one order intent and print its route and final report; a parent order (--split,
    --twap, --iceberg) prints its progress until it is done. An intent an approval rule holds
    ends the command at once (exit 0) saying so, and how to approve it.

    Example: mbx submit --symbol AAPL --quantity 10
             mbx submit --symbol BTC-USD --notional 250   (a pair: crypto)
             mbx submit --symbol AAPL --quantity 20000 --split --twap 30m/10   (a parent order)
             mbx submit --file intent.yaml
             mbx submit --csv orders.csv   (columns: symbol, quantity or notional, side, ...)
    """
    settings, _ = settings_and_config()
    flags = {"--split": split, "--twap": twap, "--iceberg": iceberg, "--jitter": jitter}
    given = [name for name, value in flags.items() if value is not None]
    if given and (file is not None or csv_file is not None):
        fail(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to an order given with --symbol; "
            "in a file, write the intent's execution block (split, twap, iceberg) instead",
            EXIT_USAGE,
        )
    if csv_file is not None:
        intents = _read_csv(csv_file, strategy)
        url = resolve_nats_url(settings)
        wait = timeout if timeout is not None else DEFAULT_FOLLOW_S
        raise typer.Exit(asyncio.run(_submit_batch(intents, url, settings.subject_prefix, wait)))
    if file is not None:
        raw = read_intent_file(file)
    else:
        if symbol is None:
            fail("give --symbol (and --quantity or --notional), or --file", EXIT_USAGE)
        raw = {
            "intent_id": intent_id or f"{strategy}-{uuid.uuid4().hex[:12]}",
            "strategy_id": strategy,
            "symbol": symbol.upper(),
            "asset_class": asset_class or _named_by(symbol),
            "side": side,
            "quantity": decimal_option(quantity, "quantity"),
            "notional": decimal_option(notional, "notional"),
            "order_type": order_type or _priced_as(limit_price, stop_price),
            "limit_price": decimal_option(limit_price, "limit-price"),
            "stop_price": decimal_option(stop_price, "stop-price"),
            "time_in_force": tif,
            "broker": broker,
        }
        try:
            raw["execution"] = execution_block(split, twap, iceberg, jitter)
        except FlagError as exc:
            fail(str(exc), EXIT_USAGE)
        raw = {k: v for k, v in raw.items() if v is not None}
    try:
        intent = OrderIntent.model_validate(raw)
    except ValidationError as exc:
        fail(f"invalid order: {validation_problems(exc, 'intent')}", EXIT_USAGE)
    url = resolve_nats_url(settings)
    wait = follow_seconds(intent, timeout)
    submitting = submit_parent if intent.execution is not None else _submit
    raise typer.Exit(asyncio.run(submitting(intent, url, settings.subject_prefix, wait)))


def _priced_as(limit_price: str | None, stop_price: str | None) -> OrderType:
    """The order type the prices given name: a limit price alone makes a limit order, a stop
    price alone a stop order, both a stop-limit order, neither a market order."""
    if limit_price is not None:
        return OrderType.STOP_LIMIT if stop_price is not None else OrderType.LIMIT
    return OrderType.STOP if stop_price is not None else OrderType.MARKET


def _named_by(symbol: str) -> AssetClass:
    """The asset class the symbol's form names; said when it is not equity, so that a pair
    traded as crypto is never a surprise (and --asset-class says otherwise)."""
    named = asset_class_of(symbol)
    if named is not AssetClass.EQUITY:
        err.print(f"[dim]{symbol.upper()}: {named} (from the symbol; --asset-class to say otherwise)[/dim]")
    return named


CSV_ALIASES = {"tif": "time_in_force", "strategy": "strategy_id", "type": "order_type"}


def _read_csv(path: Path, strategy: str) -> list[OrderIntent]:
    """Every row as an intent; any invalid row refuses the whole file (nothing is sent)."""
    import csv  # noqa: PLC0415

    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        fail(f"{path}: {exc.strerror}", EXIT_USAGE)
    except csv.Error as exc:
        fail(f"{path}: not a CSV file ({exc})", EXIT_USAGE)
    if not rows:
        fail(f"{path}: no rows (the first line names the columns: symbol,quantity,side,...)", EXIT_USAGE)
    intents, problems = [], []
    for line, row in enumerate(rows, start=2):
        raw = {CSV_ALIASES.get(k.strip(), k.strip()): v.strip() for k, v in row.items() if k and v and v.strip()}
        raw.setdefault("strategy_id", strategy)
        raw.setdefault("intent_id", f"{raw['strategy_id']}-{uuid.uuid4().hex[:12]}")
        if "symbol" in raw:  # the asset class as for --asset-class: from the symbol when not given
            raw["symbol"] = raw["symbol"].upper()
            raw.setdefault("asset_class", asset_class_of(raw["symbol"]))
        try:
            intents.append(OrderIntent.model_validate(raw))
        except ValidationError as exc:
            problems.append(f"line {line}: {validation_problems(exc, 'row')}")
    if problems:
        fail(f"{path}: {len(problems)} invalid rows, nothing sent:\n  " + "\n  ".join(problems[:20]), EXIT_USAGE)
    return intents


async def _submit_batch(intents: list[OrderIntent], url: str, prefix: str, timeout: float) -> int:
    from rich.progress import Progress  # noqa: PLC0415

    from contracts.client import MbxClient  # noqa: PLC0415

    nc = await connect(url)
    client = MbxClient(nc, Subjects(prefix))
    try:
        tracker = await client.track_many(i.intent_id for i in intents)
        duplicates = 0
        with Progress(console=console, transient=True) as progress:
            sending = progress.add_task("submitting", total=len(intents))
            for intent in intents:
                duplicates += (await client.submit(intent)).duplicate
                progress.advance(sending)
            waiting = progress.add_task("waiting for final reports", total=len(intents))
            deadline = asyncio.get_running_loop().time() + timeout
            while not await tracker.wait(0.2) and asyncio.get_running_loop().time() < deadline:
                progress.update(waiting, completed=len(tracker.finals))
        await tracker.close()
    finally:
        await nc.drain()
    statuses: dict[str, int] = {}
    brokers: dict[str, int] = {}
    for report in tracker.finals.values():
        statuses[str(report.status)] = statuses.get(str(report.status), 0) + 1
        if report.status.value == "filled" and report.broker:
            brokers[str(report.broker)] = brokers.get(str(report.broker), 0) + 1
    console.print(
        f"submitted {len(intents)} intents"
        + (f" ({duplicates} already submitted before)" if duplicates else "")
        + ": "
        + ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        + (f", {len(tracker.held)} held for approval" if tracker.held else "")
        + (f", {len(tracker.waiting)} without a final report after {timeout:g}s" if tracker.waiting else "")
    )
    if brokers:
        console.print("filled at: " + ", ".join(f"{b} {n}" for b, n in sorted(brokers.items())))
    for report in tracker.finals.values():
        if report.status.value != "filled":
            console.print(f"  {report.intent_id}: {report.status} {report.reason}")
    if tracker.held:
        console.print(f"{len(tracker.held)} held for approval (mbx approvals lists them; mbx approve <id>):")
        for event in tracker.held.values():
            console.print(f"  {event.intent_id}: rule {event.rule}, expires {event.expires_at.astimezone():%H:%M:%S}")
    ok = not tracker.waiting and all(r.status.value == "filled" for r in tracker.finals.values())
    return EXIT_OK if ok else EXIT_FAILURE


async def _submit(intent: OrderIntent, url: str, prefix: str, timeout: float) -> int:
    from contracts.client import MbxClient  # noqa: PLC0415

    try:
        async with MbxClient.connect(url, prefix=prefix, **client_options()) as client:
            tracker = await client.track(intent.intent_id, intent.strategy_id)
            ack = await client.submit(intent)
            dup = " (duplicate: this intent id was already submitted)" if ack.duplicate else ""
            console.print(f"submitted [bold]{intent.intent_id}[/bold] to {ack.stream} seq {ack.sequence}{dup}")
            try:
                outcome = await tracker.wait_or_held(timeout)
            except TimeoutError:
                for route in tracker.routes:
                    print_route(route)
                err.print(f"[yellow]no final report within {timeout:g}s[/yellow]; the order may still be working")
                return EXIT_FAILURE
            finally:
                await tracker.close()
    except Exception as exc:
        if is_connection_error(exc):
            unreachable(url, exc)
        raise
    if isinstance(outcome, ApprovalEvent):
        print_held(outcome)
        return EXIT_OK
    for route in tracker.routes:
        print_route(route)
    return print_final(outcome)


@app.command()
def cancel(
    intent_id: Annotated[str | None, typer.Argument(help="The intent whose order to cancel.")] = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="Strategy id the request is sent as (default: the intent's own while its order works; cli)."),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "",
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Read the request (intent_id, strategy_id, reason) from JSON/YAML."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the outcome.")] = 15.0,
) -> None:
    """Cancel a working order and print the outcome (cancelled, or why it could not be).

    Example: mbx cancel cli-3f2a9c1e7b4d --reason "signal reversed"
             mbx cancel --file cancel.yaml
    """
    settings, _ = settings_and_config()
    if (intent_id is None) == (file is None):
        fail("give the intent id or --file", EXIT_USAGE)
    raw: dict[str, Any] = (
        read_intent_file(file)
        if file is not None
        else {"intent_id": intent_id, "strategy_id": strategy, "reason": reason}
    )
    given = raw.get("strategy_id") is not None
    raw["strategy_id"] = raw.get("strategy_id") or "cli"
    raw.setdefault("message_id", f"cancel-{uuid.uuid4().hex}")
    raw.setdefault("correlation_id", raw.get("intent_id") or "")
    try:
        request = CancelRequest.model_validate(raw)
    except ValidationError as exc:
        fail(f"invalid cancel request: {validation_problems(exc, 'request')}", EXIT_USAGE)
    url = resolve_nats_url(settings)
    raise typer.Exit(asyncio.run(_cancel(request, url, Subjects(settings.subject_prefix), timeout, given)))


async def _cancel(request: CancelRequest, url: str, subjects: Subjects, timeout: float, given: bool) -> int:
    from workers.ops.approvals import strategy_of  # noqa: PLC0415
    from workers.ops.cancel import send_cancel  # noqa: PLC0415
    from workers.platform.order_ledger import OrderLedger  # noqa: PLC0415
    from workers.platform.topology import Topology  # noqa: PLC0415

    nc = await connect(url)
    try:
        if not given:
            # An operator cancels for the strategy that sent the intent: the router refuses a
            # cancel from any other strategy.
            entry = await OrderLedger(nc.jetstream, Topology(subjects).order_ledger_bucket).get(request.intent_id)
            owner = entry.decision.strategy_id if entry is not None and entry.decision is not None else None
            # Not at a broker yet: it may be held for approval.
            owner = owner or await strategy_of(nc.jetstream(), subjects, request.intent_id)
            if owner is not None:
                request = request.model_copy(update={"strategy_id": owner})
        answer = await send_cancel(nc, nc.jetstream(), subjects, request, timeout)
    finally:
        await nc.close()
    if answer is None:
        err.print(f"[yellow]no answer within {timeout:g}s[/yellow]; the cancel request is queued")
        return EXIT_FAILURE
    subject, data = answer
    if subjects.is_cancel_reject(subject):
        reject = CancelReject.model_validate_json(data)
        status = f" (order {reject.order_status})" if reject.order_status else ""
        console.print(f"[red]not cancelled[/red]: {reject.reason_code}: {reject.reason}{status}")
        return EXIT_FAILURE
    if subjects.is_parent_report(subject):
        # A parent order's cancel ends with its cancelled report, once every working child has ended.
        parent = ParentReport.model_validate_json(data)
        console.print(cancelled_line(parent))
        return EXIT_OK
    report = ExecutionReport.model_validate_json(data)
    console.print(f"[green]cancelled[/green] at {report.broker} ({report.filled_quantity} filled before the cancel)")
    return EXIT_OK
