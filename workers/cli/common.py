"""What every `mbx` command group shares: consoles, exit codes, settings, connections."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console

from contracts.client import split_servers
from workers.domain.config import ConfigError, MbxConfig
from workers.platform.settings import Settings, load_settings

if TYPE_CHECKING:
    from contracts import ApprovalEvent, ExecutionReport

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


class RealMoneyRefused(ConfigError):
    """A config that would trade real money, without the opt-in to."""


def startable(config: MbxConfig, live: bool) -> MbxConfig:
    """The config as the workers run it, once everything `mbx up` and `mbx worker` check before
    starting holds: every adapter and quote source known, each adapter's broker and assets its
    own, the keys they need set (``check_config``), and real money traded only when ``live``
    allows it. Values out of bounds never get this far (``parse_config``). `mbx config validate`
    calls this too, so a file it calls valid starts. Raises ``ConfigError`` naming the key."""
    from workers.venues.factory import check_config, live_refusal, resolve_config  # noqa: PLC0415

    check_config(config)
    resolved = resolve_config(config)
    refusal = live_refusal(resolved, live)
    if refusal:
        raise RealMoneyRefused(refusal)
    return resolved


def cli_settings() -> Settings:
    """The environment's settings; without a NATS user there, the operator's credentials of a
    running `mbx up --secure` (so its own terminal's commands just work)."""
    settings, _ = settings_and_config()
    if settings.nats_user:
        return settings
    from workers.devstack.stack import read_stack  # noqa: PLC0415

    stack = read_stack(settings.data_dir)
    access = stack.get("nats_access") if stack else None
    if not isinstance(access, dict):
        return settings
    from workers.platform.access import with_access  # noqa: PLC0415

    return with_access(settings, access)


def client_options() -> dict[str, Any]:
    """``nats.connect`` options of a one-shot command: fail fast, and the credentials, private
    inbox and TLS of ``cli_settings``; a clear error (exit 2) when those are unusable."""
    from workers.platform.access import connect_options  # noqa: PLC0415

    try:
        return {**ONE_SHOT_CONNECT, **connect_options(cli_settings())}
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


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


def validation_problems(exc: ValidationError, what: str) -> str:
    """A validation error as one line naming each bad field."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or what}: {e['msg']}" for e in exc.errors())


def decimal_option(value: str | None, name: str) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        fail(f"--{name}: {value!r} is not a number", EXIT_USAGE)


def read_intent_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except OSError as exc:
        fail(f"{path}: {exc.strerror}", EXIT_USAGE)
    except yaml.YAMLError as exc:
        fail(f"{path}: not valid JSON or YAML ({exc})", EXIT_USAGE)
    if not isinstance(data, dict):
        fail(f"{path}: expected a mapping of fields (one intent, or one cancel request)", EXIT_USAGE)
    return data


def unreachable(url: str, exc: BaseException) -> NoReturn:
    fail(
        f"cannot reach NATS at {url} ({type(exc).__name__}: {exc}). Start the stack with `make run` "
        "(or `mbx up`), or set MBX_NATS_URL."
    )


def is_connection_error(exc: BaseException) -> bool:
    # nats-py raises its own error family for unreachable servers and lost connections
    return isinstance(exc, OSError | TimeoutError) or type(exc).__module__.startswith("nats")


async def connect(url: str) -> Any:
    """A NATS connection, or a clear error saying which URL was tried and how to start mbx."""
    import nats  # noqa: PLC0415

    try:
        return await nats.connect(servers=split_servers(url), **client_options())
    except Exception as exc:
        if is_connection_error(exc):
            unreachable(url, exc)
        raise


def print_route(route: Any) -> None:
    chain = ", ".join(route.fallback_chain) or "none"
    console.print(
        f"routed to [bold]{route.broker}[/bold] (attempt {route.attempt}, rule {route.rule}): "
        f"{route.reason}; fallback: {chain}"
    )


def print_final(final: ExecutionReport) -> int:
    """An intent's final execution report in one line; the exit code it means."""
    status = str(final.status)
    colour = "green" if status == "filled" else "red" if status in ("rejected", "failed") else "yellow"
    filled = f" {final.filled_quantity} @ {final.average_price}" if final.average_price is not None else ""
    fees = f", fees {final.fees}" if final.fees else ""
    where = final.broker or "no broker"
    console.print(
        f"[{colour}]{status}[/{colour}] at {where}{filled}{fees}" + (f" ({final.reason})" if final.reason else "")
    )
    return EXIT_OK if status in ("filled", "accepted", "partially_filled", "cancelled") else EXIT_FAILURE


def print_held(event: ApprovalEvent) -> None:
    """An intent held for approval: by which rule, who must approve, until when, and how."""
    approvers = "one operator" if event.approvers_needed == 1 else f"{event.approvers_needed} operators"
    console.print(
        f"[yellow]held for approval[/yellow] by rule {event.rule}: {approvers} must approve it before "
        f"{event.expires_at.astimezone():%Y-%m-%d %H:%M:%S %Z}, else it ends rejected (approval_expired)"
    )
    console.print(f"  mbx approve {event.intent_id}   (or mbx deny {event.intent_id}; mbx approvals lists the queue)")
