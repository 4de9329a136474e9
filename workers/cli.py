"""``mbx``: the operator command line."""

from __future__ import annotations

import asyncio
import sys
import uuid
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console

from contracts import (
    INTENT_ID_HEADER,
    AssetClass,
    BrokerName,
    CancelReject,
    CancelRequest,
    ExecutionReport,
    OrderIntent,
    OrderType,
    Side,
    Subjects,
    TimeInForce,
)
from workers.logs import configure_logging
from workers.settings import ConfigError, MbxConfig, Settings, load_settings

app = typer.Typer(
    help="mbx: smart multi-broker execution.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


async def _quiet(_exc: Exception) -> None:
    """nats-py prints a traceback per failed attempt unless given an error callback."""


# Fail fast when the server is not there: two attempts, no endless reconnect loop.
ONE_SHOT_CONNECT: dict[str, Any] = {
    "connect_timeout": 2,
    "max_reconnect_attempts": 1,
    "reconnect_time_wait": 0.2,
    "error_cb": _quiet,
}


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def settings_and_config() -> tuple[Settings, MbxConfig]:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(f"invalid configuration: {exc}", EXIT_USAGE)


def resolve_nats_url(settings: Settings) -> str:
    """MBX_NATS_URL, else the running ``mbx up`` stack, else the default local port."""
    if settings.nats_url:
        return settings.nats_url
    from workers.devstack.stack import read_stack  # noqa: PLC0415

    stack = read_stack(settings.data_dir)
    return str(stack["nats_url"]) if stack else "nats://127.0.0.1:4222"


def resolve_database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    from workers.devstack.stack import read_stack  # noqa: PLC0415

    stack = read_stack(settings.data_dir)
    if stack:
        return str(stack["database_url"])
    fail("no database: set MBX_DATABASE_URL, or start the stack with `make run` (or `mbx up`)")


@app.command()
def up(
    nats_port: Annotated[int, typer.Option(help="Port of the embedded nats-server.")] = 4222,
    pg_port: Annotated[int, typer.Option(help="Port of the embedded PostgreSQL.")] = 54329,
    production_durability: Annotated[
        bool, typer.Option("--production-durability", help="Embedded NATS fsyncs every write (sync_interval: always).")
    ] = False,
) -> None:
    """Start NATS, PostgreSQL and every worker; Ctrl-C stops it all.

    Example: mbx up --nats-port 4333
    """
    settings, config = settings_and_config()
    if production_durability:
        settings = settings.model_copy(update={"durability": "production"})
    from workers.devstack.stack import Stack, read_stack  # noqa: PLC0415

    running = read_stack(settings.data_dir)
    if running:
        fail(f"mbx is already running (pid {running['pid']}, NATS {running['nats_url']}); stop it with `mbx down`")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        code = Stack(settings, config, nats_port=nats_port, pg_port=pg_port, console=console).run()
    except RuntimeError as exc:
        fail(str(exc))
    raise typer.Exit(code)


@app.command()
def down(timeout: Annotated[float, typer.Option(help="Seconds to wait for a clean stop.")] = 60) -> None:
    """Stop the stack that `mbx up` started (from any terminal).

    Example: mbx down
    """
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import time  # noqa: PLC0415

    from workers.devstack.stack import read_stack  # noqa: PLC0415

    settings, _ = settings_and_config()
    stack = read_stack(settings.data_dir)
    if not stack:
        console.print("mbx is not running")
        return
    pid = int(str(stack["pid"]))
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # `mbx up` removes its stack file as the last step of a clean stop; the process may
        # then linger as a zombie until whatever started it reaps it.
        if read_stack(settings.data_dir) is None:
            console.print("stopped")
            return
        time.sleep(0.2)
    fail(f"mbx (pid {pid}) did not stop within {timeout:.0f}s")


@app.command()
def worker(
    kind: Annotated[str, typer.Argument(help="router, executor or aggregator.")],
    broker: Annotated[BrokerName | None, typer.Option(help="The executor's broker.")] = None,
) -> None:
    """Run one worker in the foreground (what `mbx up` and compose start).

    Example: MBX_NATS_URL=nats://127.0.0.1:4222 mbx worker executor --broker alpaca
    """
    settings, config = settings_and_config()
    configure_logging(settings.log_level, settings.log_format)
    if kind not in ("router", "executor", "aggregator"):
        fail(f"unknown worker {kind!r}: use router, executor or aggregator", EXIT_USAGE)
    if kind == "executor" and broker is None:
        fail("an executor needs --broker (one of: " + ", ".join(BrokerName) + ")", EXIT_USAGE)
    from workers.entry import build_worker, run_until_signalled  # noqa: PLC0415

    settings = settings.model_copy(update={"nats_url": resolve_nats_url(settings)})
    if kind == "aggregator":
        settings = settings.model_copy(update={"database_url": resolve_database_url(settings)})
    try:
        asyncio.run(run_until_signalled(build_worker(kind, settings, config, broker)))
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    downgrade: Annotated[bool, typer.Option("--downgrade", help="Downgrade to the revision instead.")] = False,
) -> None:
    """Apply database migrations (to MBX_DATABASE_URL or the running stack's database).

    Example: mbx migrate            (upgrade to head)
             mbx migrate base --downgrade
    """
    from workers.db import migrate as migrations  # noqa: PLC0415

    settings, _ = settings_and_config()
    url = resolve_database_url(settings)
    try:
        if downgrade:
            migrations.downgrade(url, revision)
        else:
            migrations.upgrade(url, revision)
    except Exception as exc:  # noqa: BLE001  (report, don't trace back)
        fail(f"migration failed: {type(exc).__name__}: {exc}")
    console.print(f"database is at {'downgraded to ' if downgrade else ''}{revision}")


@app.command()
def schemas(check: Annotated[bool, typer.Option("--check", help="Fail if the files are out of date.")] = False) -> None:
    """Write the JSON Schemas and the AsyncAPI document into contracts/schemas/.

    Example: mbx schemas --check
    """
    from workers.schemas import write_schemas  # noqa: PLC0415

    stale = write_schemas(check=check)
    if check and stale:
        fail("out of date: " + ", ".join(stale) + " (run `make schemas`)")
    console.print("schemas are up to date" if check else "schemas written to contracts/schemas/")


def _problems(exc: ValidationError, what: str) -> str:
    """A validation error as one line naming each bad field."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or what}: {e['msg']}" for e in exc.errors())


def _decimal(value: str | None, name: str) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        fail(f"--{name}: {value!r} is not a number", EXIT_USAGE)


@app.command()
def submit(
    symbol: Annotated[str | None, typer.Option(help="Symbol, e.g. AAPL or BTC-USD.")] = None,
    quantity: Annotated[str | None, typer.Option(help="Units (fractional allowed).")] = None,
    notional: Annotated[str | None, typer.Option(help="Dollar amount instead of a quantity.")] = None,
    side: Annotated[Side, typer.Option(help="buy or sell.")] = Side.BUY,
    asset_class: Annotated[AssetClass, typer.Option(help="equity, crypto or option.")] = AssetClass.EQUITY,
    order_type: Annotated[OrderType, typer.Option(help="market, limit, stop, stop_limit.")] = OrderType.MARKET,
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
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the final report.")] = 15.0,
) -> None:
    """Send one order intent and print its route and final report.

    Example: mbx submit --symbol AAPL --quantity 10
             mbx submit --symbol BTC-USD --asset-class crypto --notional 250
             mbx submit --file intent.yaml
             mbx submit --csv orders.csv   (columns: symbol, quantity or notional, side, ...)
    """
    settings, _ = settings_and_config()
    if csv_file is not None:
        intents = _read_csv(csv_file, strategy)
        url = resolve_nats_url(settings)
        raise typer.Exit(asyncio.run(_submit_batch(intents, url, settings.subject_prefix, timeout)))
    if file is not None:
        raw = _read_intent_file(file)
    else:
        if symbol is None:
            fail("give --symbol (and --quantity or --notional), or --file", EXIT_USAGE)
        raw = {
            "intent_id": intent_id or f"{strategy}-{uuid.uuid4().hex[:12]}",
            "strategy_id": strategy,
            "symbol": symbol.upper(),
            "asset_class": asset_class,
            "side": side,
            "quantity": _decimal(quantity, "quantity"),
            "notional": _decimal(notional, "notional"),
            "order_type": order_type,
            "limit_price": _decimal(limit_price, "limit-price"),
            "stop_price": _decimal(stop_price, "stop-price"),
            "time_in_force": tif,
            "broker": broker,
        }
        raw = {k: v for k, v in raw.items() if v is not None}
    try:
        intent = OrderIntent.model_validate(raw)
    except ValidationError as exc:
        fail(f"invalid order: {_problems(exc, 'intent')}", EXIT_USAGE)
    url = resolve_nats_url(settings)
    code = asyncio.run(_submit(intent, url, settings.subject_prefix, timeout))
    raise typer.Exit(code)


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
        raw.setdefault("asset_class", "equity")  # as for --asset-class; side stays required
        raw.setdefault("intent_id", f"{raw['strategy_id']}-{uuid.uuid4().hex[:12]}")
        if "symbol" in raw:
            raw["symbol"] = raw["symbol"].upper()
        try:
            intents.append(OrderIntent.model_validate(raw))
        except ValidationError as exc:
            problems.append(f"line {line}: {_problems(exc, 'row')}")
    if problems:
        fail(f"{path}: {len(problems)} invalid rows, nothing sent:\n  " + "\n  ".join(problems[:20]), EXIT_USAGE)
    return intents


async def _submit_batch(intents: list[OrderIntent], url: str, prefix: str, timeout: float) -> int:
    from rich.progress import Progress  # noqa: PLC0415

    from contracts.client import MbxClient  # noqa: PLC0415

    nc = await _connect(url)
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
        + (f", {len(tracker.waiting)} without a final report after {timeout:g}s" if tracker.waiting else "")
    )
    if brokers:
        console.print("filled at: " + ", ".join(f"{b} {n}" for b, n in sorted(brokers.items())))
    for report in tracker.finals.values():
        if report.status.value != "filled":
            console.print(f"  {report.intent_id}: {report.status} {report.reason}")
    ok = not tracker.waiting and all(r.status.value == "filled" for r in tracker.finals.values())
    return EXIT_OK if ok else EXIT_FAILURE


def _read_intent_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except OSError as exc:
        fail(f"{path}: {exc.strerror}", EXIT_USAGE)
    except yaml.YAMLError as exc:
        fail(f"{path}: not valid JSON or YAML ({exc})", EXIT_USAGE)
    if not isinstance(data, dict):
        fail(f"{path}: expected a mapping of fields (one intent, or one cancel request)", EXIT_USAGE)
    return data


def _unreachable(url: str, exc: BaseException) -> NoReturn:
    fail(
        f"cannot reach NATS at {url} ({type(exc).__name__}: {exc}). Start the stack with `make run` "
        "(or `mbx up`), or set MBX_NATS_URL."
    )


def _is_connection_error(exc: BaseException) -> bool:
    # nats-py raises its own error family for unreachable servers and lost connections
    return isinstance(exc, OSError | TimeoutError) or type(exc).__module__.startswith("nats")


async def _connect(url: str) -> Any:
    """A NATS connection, or a clear error saying which URL was tried and how to start mbx."""
    import nats  # noqa: PLC0415

    try:
        return await nats.connect(url, **ONE_SHOT_CONNECT)
    except Exception as exc:
        if _is_connection_error(exc):
            _unreachable(url, exc)
        raise


async def _audit_engine(url: str, what: str) -> Any:
    """An engine for the audit trail, checked first: nothing is changed that cannot be recorded."""
    from sqlalchemy import text  # noqa: PLC0415

    from workers.db.engine import make_engine  # noqa: PLC0415

    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001  (any failure here means: do not go on)
        await engine.dispose()
        fail(f"cannot record {what}: the database is not reachable ({type(exc).__name__})")
    return engine


async def _submit(intent: OrderIntent, url: str, prefix: str, timeout: float) -> int:
    from contracts.client import MbxClient  # noqa: PLC0415

    try:
        async with MbxClient.connect(url, prefix=prefix, **ONE_SHOT_CONNECT) as client:
            tracker = await client.track(intent.intent_id)
            ack = await client.submit(intent)
            dup = " (duplicate: this intent id was already submitted)" if ack.duplicate else ""
            console.print(f"submitted [bold]{intent.intent_id}[/bold] to {ack.stream} seq {ack.sequence}{dup}")
            try:
                final = await tracker.wait(timeout)
            except TimeoutError:
                for route in tracker.routes:
                    _print_route(route)
                err.print(f"[yellow]no final report within {timeout:g}s[/yellow]; the order may still be working")
                return EXIT_FAILURE
            finally:
                await tracker.close()
    except Exception as exc:
        if _is_connection_error(exc):
            _unreachable(url, exc)
        raise
    for route in tracker.routes:
        _print_route(route)
    status = str(final.status)
    colour = "green" if status == "filled" else "red" if status in ("rejected", "failed") else "yellow"
    filled = f" {final.filled_quantity} @ {final.average_price}" if final.average_price is not None else ""
    fees = f", fees {final.fees}" if final.fees else ""
    where = final.broker or "no broker"
    console.print(
        f"[{colour}]{status}[/{colour}] at {where}{filled}{fees}" + (f" ({final.reason})" if final.reason else "")
    )
    return EXIT_OK if status in ("filled", "accepted", "partially_filled", "cancelled") else EXIT_FAILURE


@app.command()
def cancel(
    intent_id: Annotated[str | None, typer.Argument(help="The intent whose order to cancel.")] = None,
    strategy: Annotated[str, typer.Option(help="Strategy id the request is sent as.")] = "cli",
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
        _read_intent_file(file)
        if file is not None
        else {"intent_id": intent_id, "strategy_id": strategy, "reason": reason}
    )
    raw.setdefault("strategy_id", strategy)
    raw.setdefault("message_id", f"cancel-{uuid.uuid4().hex}")
    raw.setdefault("correlation_id", raw.get("intent_id") or "")
    try:
        request = CancelRequest.model_validate(raw)
    except ValidationError as exc:
        fail(f"invalid cancel request: {_problems(exc, 'request')}", EXIT_USAGE)
    url = resolve_nats_url(settings)
    raise typer.Exit(asyncio.run(_cancel(request, url, Subjects(settings.subject_prefix), timeout)))


async def _cancel(request: CancelRequest, url: str, subjects: Subjects, timeout: float) -> int:
    from workers.bus import publish  # noqa: PLC0415

    nc = await _connect(url)
    try:
        outcome: asyncio.Future[tuple[str, bytes]] = asyncio.get_running_loop().create_future()

        async def seen(msg: Any) -> None:
            if (msg.headers or {}).get(INTENT_ID_HEADER) == request.intent_id and not outcome.done():
                outcome.set_result((msg.subject, msg.data))

        subs = [
            await nc.subscribe(subjects.execution("*", "cancelled"), cb=seen),
            await nc.subscribe(subjects.cancel_reject("*"), cb=seen),
            await nc.subscribe(subjects.cancel_reject(None), cb=seen),
        ]
        await publish(nc.jetstream(), subjects.cancel(request.strategy_id), request, intent_id=request.intent_id)
        try:
            subject, data = await asyncio.wait_for(outcome, timeout)
        except TimeoutError:
            err.print(f"[yellow]no answer within {timeout:g}s[/yellow]; the cancel request is queued")
            return EXIT_FAILURE
        finally:
            for sub in subs:
                await sub.unsubscribe()
    finally:
        await nc.close()
    if subject.endswith(".cancel_rejected"):
        reject = CancelReject.model_validate_json(data)
        status = f" (order {reject.order_status})" if reject.order_status else ""
        console.print(f"[red]not cancelled[/red]: {reject.reason_code}: {reject.reason}{status}")
        return EXIT_FAILURE
    report = ExecutionReport.model_validate_json(data)
    console.print(f"[green]cancelled[/green] at {report.broker} ({report.filled_quantity} filled before the cancel)")
    return EXIT_OK


FAULT_HELP = (
    "outage=true|false, reject_next=N, timeouts_after_accept=N, hidden_lookups=N, latency_ms=X, "
    "unknown_symbols=A,B, lot_size=Q|none"
)


@app.command()
def fault(
    broker: Annotated[BrokerName, typer.Argument(help="The simulated broker.")],
    changes: Annotated[list[str] | None, typer.Argument(help=f"Faults to set: {FAULT_HELP}.")] = None,
) -> None:
    """Show or switch a simulated broker's faults while the stack runs.

    Example: mbx fault alpaca outage=true
             mbx fault schwab timeouts_after_accept=1 latency_ms=80
             mbx fault alpaca            (shows the current faults)
    """
    settings, _ = settings_and_config()
    parsed: dict[str, Any] = {}
    for change in changes or []:
        name, sep, value = change.partition("=")
        if not sep or not name:
            fail(f"{change!r}: expected name=value ({FAULT_HELP})", EXIT_USAGE)
        parsed[name] = _fault_value(name, value)
    url = resolve_nats_url(settings)
    raise typer.Exit(asyncio.run(_fault(Subjects(settings.subject_prefix).control(broker), parsed, url)))


def _fault_value(name: str, value: str) -> Any:
    lowered = value.strip().lower()
    if lowered in ("true", "on", "yes"):
        return True
    if lowered in ("false", "off", "no"):
        return False
    if lowered in ("none", "null", ""):
        return [] if name == "unknown_symbols" else None
    if name == "unknown_symbols":
        return [v.strip().upper() for v in value.split(",") if v.strip()]
    try:
        number = float(value)
    except ValueError:
        return value  # the executor names what is wrong with it
    return int(number) if number.is_integer() and name != "latency_ms" else number


async def _fault(subject: str, changes: dict[str, Any], url: str) -> int:
    import json  # noqa: PLC0415

    nc = await _connect(url)
    try:
        reply = await nc.request(subject, json.dumps({"faults": changes}).encode(), timeout=5)
    except Exception as exc:
        if type(exc).__name__ in ("NoRespondersError", "TimeoutError") or isinstance(exc, TimeoutError):
            fail(f"no executor answers on {subject}: is that broker's executor running?")
        raise
    finally:
        await nc.close()
    answer = json.loads(reply.data)
    if "error" in answer:
        fail(str(answer["error"]), EXIT_USAGE)
    console.print(f"[bold]{answer['broker']}[/bold] faults:")
    for name, value in answer["faults"].items():
        console.print(f"  {name:<22} {value}")
    return EXIT_OK


@app.command("import-legacy")
def import_legacy(
    source: Annotated[str, typer.Option("--from", help="SQLAlchemy URL of the single-broker database.")],
    broker: Annotated[BrokerName, typer.Option(help="The broker every imported row belongs to.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read, map and report; write nothing.")] = False,
    backup_dir: Annotated[Path, typer.Option(help="Where the source's backup goes.")] = Path(".mbx/backups"),
) -> None:
    """Import a single-broker database (orders, positions, trade_logs) with every row tagged with
    BROKER; backs the source up first and ends with a validation report.

    Example: mbx import-legacy --from sqlite:///data/trading.db --broker alpaca --dry-run
    """
    from sqlalchemy import create_engine  # noqa: PLC0415
    from sqlalchemy.exc import ArgumentError, OperationalError  # noqa: PLC0415

    from workers.legacy import LegacyError  # noqa: PLC0415
    from workers.legacy import import_legacy as run_import  # noqa: PLC0415

    settings, _ = settings_and_config()
    target_url = resolve_database_url(settings)
    target = create_engine(settings.model_copy(update={"database_url": target_url}).sqlalchemy_url())
    try:
        report = run_import(
            source,
            target,
            broker,
            dry_run=dry_run,
            backup_dir=backup_dir,
            progress=lambda step: console.print(f"[dim]{step}[/dim]"),
        )
    except ArgumentError as exc:
        fail(f"--from: {exc}", EXIT_USAGE)
    except (LegacyError, OperationalError) as exc:
        fail(str(exc).splitlines()[0])
    finally:
        target.dispose()
    for path in report.backup:
        console.print(f"backup: {path}")
    title = "dry run: nothing written" if dry_run else "imported"
    console.print(f"[bold]{title}[/bold] ({broker})")
    console.print(
        f"  {'table':<11} {'read':>6} {'written':>8} {'present':>8}  {'quantity src/target':>32}  value src/target"
    )
    for name, t in report.tables.items():
        console.print(
            f"  {name:<11} {t.read:>6} {t.written:>8} {t.already_there:>8}  "
            f"{f'{t.source_quantity}/{t.target_quantity}':>32}  {t.source_value}/{t.target_value}"
            + ("" if t.matches else "  [red]MISMATCH[/red]")
        )
    if dry_run:
        console.print("validation: dry run, the target sums above are what the import would write")
    elif report.matches:
        console.print("[green]validation: every table matches[/green]")
    else:
        fail("validation: the target does not match the source (see MISMATCH above)")
    raise typer.Exit(EXIT_OK)


def _print_route(route: Any) -> None:
    chain = ", ".join(route.fallback_chain) or "none"
    console.print(
        f"routed to [bold]{route.broker}[/bold] (attempt {route.attempt}, rule {route.rule}): "
        f"{route.reason}; fallback: {chain}"
    )


_registered = False


def register_commands() -> None:
    """Attach the command groups that live in their own modules (once)."""
    global _registered  # noqa: PLW0603  (one app per process)
    if _registered:
        return
    import workers.cli_views  # noqa: F401, PLC0415  (registers the read-only commands)
    from workers.cli_config import config_app  # noqa: PLC0415
    from workers.cli_dlq import dlq  # noqa: PLC0415

    app.add_typer(dlq, name="dlq")
    app.add_typer(config_app, name="config")
    _registered = True


def main() -> None:
    register_commands()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
