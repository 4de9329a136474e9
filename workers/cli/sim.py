"""`mbx fault`: switch a simulated (or fake) broker's faults at runtime."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from contracts import (
    BrokerName,
    Subjects,
)
from workers.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    connect,
    console,
    fail,
    resolve_nats_url,
    settings_and_config,
)

app = typer.Typer()


FAULT_HELP = (
    "outage=true|false, reject_next=N, timeouts_after_accept=N, hidden_lookups=N, latency_ms=X, "
    "unknown_symbols=A,B, lot_size=Q|none, rate_limited_next=N, auth_expired=true|false, warning=TEXT"
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

    nc = await connect(url)
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
    rate = answer.get("rate")
    if rate:  # the simulator plays the broker's side of its rate limit
        console.print(
            f"rate limit: at most {rate['peak']} of {rate['limit']} requests in any {rate['per_seconds']:g} s window "
            f"so far; {rate['refused']} refused with 429"
        )
    return EXIT_OK
