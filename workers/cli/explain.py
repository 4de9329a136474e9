"""``mbx explain``: the whole story of one intent, or of one parent order and its children, from the
audit trail in Postgres.

Registered on the ``mbx`` app by ``workers.cli``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from workers.cli.common import EXIT_OK, console, fail, resolve_database_url, settings_and_config

if TYPE_CHECKING:
    from workers.readmodel.parents import ParentStory

app = typer.Typer()

Story = dict[str, list[dict[str, Any]]]


@app.command()
def explain(
    intent_id: Annotated[str, typer.Argument(help="The intent (or parent order) to explain.")],
    as_json: Annotated[bool, typer.Option("--json", help="Everything as JSON.")] = False,
) -> None:
    """The whole story of one intent: its hold for approval (each step: who, when, note), each
    route decision (every candidate and its scores, the rule that fired, the brokers left out
    and why), failovers, the orders and their fills. For a
    parent order (an intent with --split, --twap or --iceberg): its algorithm, arrival price,
    status, filled quantity and slippage, and every child in slice order with its broker, status,
    fill and the rule that routed it; for a child, the parent it belongs to.

    Example: mbx explain strat1-000043
    """
    settings, _ = settings_and_config()
    database = resolve_database_url(settings)
    url = settings.model_copy(update={"database_url": database}).sqlalchemy_url()
    story, parent, child = asyncio.run(_read(url, intent_id))
    if not any(story.values()) and not parent.found:
        fail(f"nothing is recorded for intent {intent_id!r} (never submitted, or not persisted yet)")
    if as_json:
        whole: dict[str, Any] = dict(story)
        if parent.found:
            whole["parent"] = parent.parent
            whole["children"] = [asdict(c) for c in parent.children]
        if child is not None:
            whole["child_of"] = {"parent_intent_id": child[0], "slice_number": child[1]}
        console.print_json(json.dumps(whole, default=str))
        raise typer.Exit(EXIT_OK)
    if parent.found:
        print_parent(parent)
    if child is not None:
        slice_words = f", slice {child[1]}" if child[1] is not None else ""
        console.print(
            f"child of parent order [bold]{child[0]}[/bold]{slice_words} (mbx explain {child[0]} for the whole order)"
        )
    print_intent(story)
    raise typer.Exit(EXIT_OK)


async def _read(url: str, intent_id: str) -> tuple[Story, ParentStory, tuple[str, int | None] | None]:
    # Loaded when the command runs: `mbx` itself loads no database library.
    from workers.platform.db.engine import make_engine  # noqa: PLC0415
    from workers.readmodel.explain import intent_story  # noqa: PLC0415
    from workers.readmodel.parents import child_of, parent_story  # noqa: PLC0415

    engine = make_engine(url, pool_size=1)
    try:
        story = await intent_story(engine, intent_id)
        parent = await parent_story(engine, intent_id)
        child = await child_of(engine, intent_id)
    except OSError as exc:
        fail(f"cannot reach the database ({exc})")
    finally:
        await engine.dispose()
    return story, parent, child


def print_parent(story: ParentStory) -> None:
    """The parent's state, then each child in slice order."""
    from workers.readmodel.explain import number  # noqa: PLC0415
    from workers.readmodel.parents import describe_execution  # noqa: PLC0415

    row = story.parent
    if row is None:
        console.print(
            f"parent order [bold]{story.parent_intent_id}[/bold]: no report of it is stored yet; "
            f"child orders stored: {len(story.children)}"
        )
    else:
        quantity = number(row["quantity"])
        console.print(
            f"parent order [bold]{story.parent_intent_id}[/bold] ({row['strategy_id']}): {row['side']} {quantity} "
            f"{row['symbol']}, {describe_execution(row['execution'])}"
        )
        average = f" @ {number(row['average_price'])}" if row["average_price"] is not None else ""
        console.print(
            f"  status: [bold]{row['status']}[/bold]; {number(row['filled_quantity'])} of {quantity} filled{average}"
        )
        arrival = number(row["arrival_price"]) if row["arrival_price"] is not None else "not known (no fresh quote)"
        slippage = (
            f"{row['slippage_bps']:+.2f} bps (> 0 worse)" if row["slippage_bps"] is not None else "not measured yet"
        )
        console.print(f"  arrival price: {arrival}; slippage against it: {slippage}")
        if row["reason"]:
            console.print(f"  why: {row['reason']}")
    by_broker = story.filled_by_broker()
    if by_broker:
        console.print("  filled by broker: " + ", ".join(f"{b} {number(q)}" for b, q in by_broker.items()))
    if not story.children:
        console.print("  no child yet")
        return
    console.print(f"  children ({len(story.children)}), in slice order:")
    for c in story.children:
        size = (
            f"{number(c.filled_quantity)}/{number(c.quantity)}" if c.quantity is not None else number(c.filled_quantity)
        )
        price = f" @ {number(c.average_price)}" if c.average_price is not None else ""
        attempt = f" (attempt {c.attempts})" if c.attempts > 1 else ""
        routed = f"routed by {c.rule}{attempt}" if c.rule else ""
        route_words = ": ".join(part for part in (routed, c.reason) if part)
        why = "; ".join(part for part in (route_words, _split(c.split)) if part)
        where = f" at {c.broker}" if c.broker else ""
        slice_words = "-" if c.slice_number is None else str(c.slice_number)
        console.print(
            f"    slice {slice_words}  {c.intent_id}{where}: [bold]{c.status}[/bold] {size}{price}"
            + (f"; {why}" if why else "")
        )


def _split(reason: str) -> str:
    return f"split: {reason}" if reason else ""


def print_intent(story: Story) -> None:
    """Its hold for approval, each route decision with its order and failover, the router's
    rejections, then the fills."""
    from workers.readmodel.explain import (  # noqa: PLC0415
        approval_lines,
        by_attempt,
        number,
        order_outcome,
        router_rejections,
    )

    for line in approval_lines(story["approvals"]):
        console.print(line)
    for route, order, failover in by_attempt(story):
        decision = route["decision"]
        head = f"attempt {route['attempt']}: routed to [bold]{route['broker_name']}[/bold] by {route['rule']}"
        console.print(head + (f" (after {route['failover_from']} failed)" if route["failover_from"] else ""))
        console.print(f"  why: {decision.get('reason', '')}")
        if decision.get("split"):
            console.print(f"  {_split(decision['split'])}")
        table = Table(show_header=True, box=None, padding=(0, 2))
        for column in ("candidate", "total", "cost", "speed", "fill", "est. fee", "latency ms", "buying power"):
            table.add_column(column)
        for c in decision.get("candidates", []):
            power = c.get("buying_power")
            table.add_row(
                c["broker"],
                f"{c['total']:.3f}",
                f"{c['cost_score']:.3f}",
                f"{c['speed_score']:.3f}",
                f"{c['fill_score']:.3f}",
                number(Decimal(str(c["estimated_fee"]))),
                f"{c['expected_latency_ms']:.0f}",
                "not known" if power is None else number(Decimal(str(power))),
            )
        console.print(table)
        if decision.get("closes_position") is not None:
            held = number(Decimal(str(decision["closes_position"])))
            console.print(f"  closes the position of {held} held at {route['broker_name']}")
        for e in decision.get("excluded", []):
            console.print(f"  left out: {e['broker']} ({e['reason_code']}): {e['reason']}")
        if order:
            status, detail = order_outcome(order)
            console.print(f"  order at {route['broker_name']}: [bold]{status}[/bold]{detail}")
        if failover:
            console.print(f"  [red]failed over[/red]: {failover['reason_code']}: {failover['reason']}")
    for reason in router_rejections(story):
        console.print(f"rejected by the router: {reason}")
    for fill in story["fills"]:
        console.print(
            f"fill {fill['fill_id']}: {fill['side']} {number(fill['quantity'])} {fill['symbol']} "
            f"@ {number(fill['price'])} "
            f"at {fill['broker_name']} (fee {number(fill['fee'])}, {fill['executed_at']:%H:%M:%S.%f})"
        )
