"""The best-execution report over a small book written straight into Postgres, every figure
checked against values computed by hand (docs/operations.md, "The best-execution report")."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner, Result

from workers.cli.main import app
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings
from workers.readmodel.execution_format import execution_cells
from workers.readmodel.execution_report import ExecutionReport, ExecutionRow, execution_report

pytestmark = pytest.mark.integration

T = datetime(2026, 11, 10, 14, 0, tzinfo=UTC)
D = Decimal


def ms(n: float) -> timedelta:
    return timedelta(milliseconds=n)


@dataclass
class Order:
    """One attempt at one broker, with its route's quote, the broker's acknowledgement and its
    fills (ms after the decision)."""

    intent: str
    broker: str | None
    side: str = "buy"
    order_type: str = "market"
    quantity: str | None = None
    notional: str | None = None
    mid: str | None = None
    spread: str = "0"
    status: str = "filled"
    filled: str = "0"
    average: str | None = None
    fills: list[tuple[str, str, str, float]] = field(default_factory=list)  # quantity, price, fee, ms
    rule: str = "default:equity"
    attempt: int = 1
    at: datetime = T
    required: bool = False
    ack: float | None = None


BOOK = [
    Order(
        "a1",
        "alpaca",
        quantity="10",
        mid="100.00",
        spread="0.02",
        filled="10",
        average="100.01",
        fills=[("5", "100.00", "0.05", 40), ("5", "100.02", "0.05", 90)],
        ack=12.5,
    ),
    Order(
        "a2",
        "alpaca",
        side="sell",
        quantity="20",
        mid="50.00",
        spread="0.01",
        filled="20",
        average="50.00",
        fills=[("20", "50.00", "0.20", 60)],
        at=T + ms(1000),
        ack=20,
    ),
    Order("a3", "alpaca", order_type="limit", quantity="5", mid="20", status="cancelled", at=T + ms(2000), ack=8),
    Order("a4", "alpaca", notional="150000", mid="150.00", spread="0.05", status="rejected", at=T + ms(3000)),
    Order(
        "a4",
        "ibkr",
        notional="150000",
        mid="150.00",
        spread="0.05",
        filled="1000",
        average="150.05",
        fills=[("1000", "150.05", "1.00", 200)],
        rule="score",
        attempt=2,
        at=T + ms(3500),
        ack=45,
    ),
    Order(
        "a5",
        "ibkr",
        side="sell",
        order_type="limit",
        quantity="100",
        mid="30",
        spread="0.01",
        status="cancelled",
        filled="40",
        average="30.02",
        fills=[("40", "30.02", "0.40", 150)],
        rule="preference",
        at=T + ms(4000),
        ack=30,
    ),
    Order("a6", None, quantity="10", status="rejected", at=T + ms(5000)),
    Order(
        "a7",
        "robinhood",
        quantity="2",
        mid="10",
        spread="0.01",
        filled="2",
        average="10.00",
        fills=[("2", "10.00", "0", 30)],
        rule="rule:small-to-robinhood",
        at=T + ms(6000),
        ack=25,
    ),
    Order(
        "a8",
        "alpaca",
        quantity="10",
        mid="100",
        spread="0.02",
        filled="10",
        average="100.00",
        fills=[("10", "100.00", "0.10", 100)],
        required=True,
        at=T + ms(7000),
        ack=16,
    ),
    # Outside November: the last millisecond of October and the first instant of December.
    Order(
        "oct",
        "alpaca",
        quantity="10",
        mid="100",
        filled="10",
        average="100",
        at=datetime(2026, 11, 1, tzinfo=UTC) - ms(1),
        ack=1,
    ),
    Order(
        "dec",
        "alpaca",
        quantity="10",
        mid="100",
        filled="10",
        average="100",
        at=datetime(2026, 12, 1, tzinfo=UTC),
        ack=1000,
    ),
]


async def write_book(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for o in BOOK:
            key = {"i": o.intent, "b": o.broker, "a": o.attempt}
            if o.broker is not None:
                mid = D(o.mid) if o.mid else None
                quote = (
                    None
                    if mid is None
                    else {
                        "source": "simulated",
                        "bid": str(mid - D(o.spread)),
                        "ask": str(mid + D(o.spread)),
                        "mid": str(mid),
                        "at": o.at.isoformat(),
                        "age_ms": 5.0,
                    }
                )
                excluded = [{"broker": "schwab", "reason_code": "rule_require", "reason": "rule x requires alpaca"}]
                decision = {"reference_price": o.mid, "quote": quote, "excluded": excluded if o.required else []}
                await conn.execute(
                    text(
                        "INSERT INTO multi_broker_routes (intent_id, strategy_id, broker_name, attempt, rule, "
                        "fallback_chain, failover_from, decision, decided_at) VALUES (:i, 's1', :b, :a, :rule, "
                        "'[]', :f, CAST(:d AS jsonb), :at)"
                    ),
                    key
                    | {
                        "rule": o.rule,
                        "f": "alpaca" if o.attempt == 2 else None,
                        "d": json.dumps(decision),
                        "at": o.at,
                    },
                )
            first = min((o.at + ms(f[3]) for f in o.fills), default=None)
            # What the aggregator keeps on the order row (migration 0014): the route's quote, the
            # fills' totals and last time, and whether the attempt failed over (a4 at alpaca).
            mid = D(o.mid) if o.broker is not None and o.mid else None
            fills = [(D(q), D(p), D(fee), o.at + ms(after)) for q, p, fee, after in o.fills]
            traded = {
                "bid": None if mid is None else mid - D(o.spread),
                "ask": None if mid is None else mid + D(o.spread),
                "mid": mid,
                "tq": sum((q for q, _, _, _ in fills), D(0)) if fills else None,
                "tv": sum((q * p for q, p, _, _ in fills), D(0)) if fills else None,
                "tf": sum((fee for _, _, fee, _ in fills), D(0)) if fills else None,
                "last": max((at for _, _, _, at in fills), default=None),
                "over": (o.intent, o.broker, o.attempt) == ("a4", "alpaca", 1),
            }
            await conn.execute(
                text(
                    "INSERT INTO orders (intent_id, strategy_id, broker_name, client_order_id, broker_order_id,"
                    " attempt,"
                    " symbol, asset_class, side, order_type, quantity, notional, filled_quantity, average_price,"
                    " status, created_at, updated_at, decided_at, reference_price, first_fill_at, acknowledged_at,"
                    " quote_bid, quote_ask, quote_mid, traded_quantity, traded_value, traded_fees, last_fill_at,"
                    " failed_over)"
                    " VALUES (:i, 's1', :b, :i, :bo, :a, 'AAPL', 'equity', :side, :type, :q, :n, :filled, :avg,"
                    " :status, :created, :created, :decided, :ref, :first, :ack, :bid, :ask, :mid, :tq, :tv, :tf,"
                    " :last, :over)"
                ),
                key
                | traded
                | {
                    "bo": f"bo-{o.intent}-{o.attempt}",
                    "side": o.side,
                    "type": o.order_type,
                    "q": D(o.quantity) if o.quantity else None,
                    "n": D(o.notional) if o.notional else None,
                    "filled": D(o.filled),
                    "avg": D(o.average) if o.average else None,
                    "status": o.status,
                    "created": o.at + ms(2),
                    "decided": o.at if o.broker else None,
                    "ref": D(o.mid) if o.mid else None,
                    "first": first,
                    "ack": None if o.ack is None else o.at + ms(o.ack),
                },
            )
            for n, (quantity, price, fee, after) in enumerate(o.fills):
                await conn.execute(
                    text(
                        "INSERT INTO trade_logs (fill_id, intent_id, strategy_id, broker_name, broker_order_id, symbol,"
                        " side, quantity, price, fee, executed_at) VALUES (:fid, :i, 's1', :b, :bo, 'AAPL', :side,"
                        " :q, :p, :fee, :at)"
                    ),
                    key
                    | {
                        "fid": f"{o.intent}-{o.attempt}-{n}",
                        "bo": f"bo-{o.intent}-{o.attempt}",
                        "side": o.side,
                        "q": D(quantity),
                        "p": D(price),
                        "fee": D(fee),
                        "at": o.at + ms(after),
                    },
                )
        await conn.execute(
            text(
                "INSERT INTO failover_events (intent_id, strategy_id, failed_broker, attempt, reason_code, reason,"
                " occurred_at) VALUES ('a4', 's1', 'alpaca', 1, 'venue_rejected', 'rejected', :at)"
            ),
            {"at": T + ms(3400)},
        )


@pytest.fixture
async def book(isolated: Settings) -> Any:
    engine = make_engine(isolated.sqlalchemy_url(), pool_size=1)
    await write_book(engine)
    yield engine, isolated
    await engine.dispose()


def line(
    report: ExecutionReport, broker: str | None, order_type: str | None = None, bucket: str | None = None
) -> ExecutionRow:
    [found] = [r for r in report.rows if (r.broker, r.order_type, r.size_bucket) == (broker, order_type, bucket)]
    return found


def close(value: Any, expected: tuple[float, ...] | None) -> bool:
    if expected is None:
        return value is None
    return value is not None and all(abs(v - e) < 1e-6 for v, e in zip(value, expected, strict=True))


async def test_every_figure_of_a_hand_computed_month_matches_to_the_cent_and_millisecond(book: Any) -> None:
    """Each line's counts, rates, timings, price improvement, effective spread and fees are the
    ones worked out by hand from the book, and orders outside the month are left out."""
    engine, _ = book
    report = await execution_report(engine, "2026-11")
    keys = [(r.broker, r.order_type, r.size_bucket) for r in report.rows]
    assert keys == [
        ("alpaca", "limit", "<1k"), ("alpaca", "market", "1k-10k"), ("alpaca", "market", ">=100k"),
        ("alpaca", None, None),
        ("ibkr", "limit", "1k-10k"), ("ibkr", "market", ">=100k"), ("ibkr", None, None),
        ("robinhood", "market", "<1k"), ("robinhood", None, None),
        ("router", "market", "unknown"), ("router", None, None),
        (None, None, None),
    ]  # fmt: skip

    # alpaca market 1k-10k: a1 (buy 10 @ 100.01 vs 99.98/100.00/100.02), a2 (sell 20 @ 50 vs
    # 49.99/50/50.01), a8 (buy 10 @ 100 vs 99.98/100/100.02).
    m = line(report, "alpaca", "market", "1k-10k")
    assert (m.orders, m.notional, m.filled, m.cancelled, m.rejected, m.failovers) == (3, D(3000), 3, 0, 0, 0)
    assert m.fill_rate == 1 and m.cancel_rate == 0
    assert close(m.ack_ms, (16, 19.2, 19.92))  # of 12.5, 20, 16 ms, interpolated
    assert close(m.first_fill_ms, (60, 92, 99.2))  # of 40, 60, 100 ms, interpolated
    assert close(m.complete_fill_ms, (90, 98, 99.8))  # of 90, 60, 100 ms
    assert (m.quoted_orders, m.quoted_shares) == (3, D(40))
    assert m.improvement_usd == D("0.50")  # 0.01 x 10 + 0.01 x 20 + 0.02 x 10
    assert m.improvement_per_share == D("0.0125")
    assert m.effective_spread_usd == D("0.20")  # 2 x 0.01 x 10 + 0 + 0
    assert m.effective_spread_per_share == D("0.005")
    assert m.fees == D("0.40") and m.fee_per_share == D("0.01")
    assert m.filled_value == D("3000.10")
    assert execution_cells(m) == (
        "alpaca", "market", "1k-10k", "3", "3000.00", "100.0%", "0.0%", "0", "0", "0", "16.0 / 19.2 / 19.9",
        "60.0 / 92.0 / 99.2", "90.0 / 98.0 / 99.8", "3", "0.50", "0.0125", "0.0050", "0.67", "0.40", "0.0100",
        "0.13",
    )  # fmt: skip

    rejected = line(report, "alpaca", "market", ">=100k")  # a4's first attempt, failed over to ibkr
    assert (rejected.orders, rejected.notional, rejected.rejected, rejected.failovers) == (1, D(150000), 1, 1)
    assert rejected.fill_rate == 0 and rejected.first_fill_ms is None and rejected.quoted_orders == 0
    assert rejected.ack_ms is None  # refused: never acknowledged

    cancelled = line(report, "alpaca", "limit", "<1k")
    assert (cancelled.orders, cancelled.notional, cancelled.cancel_rate) == (1, D(100), 1)
    assert close(cancelled.ack_ms, (8, 8, 8))

    # ibkr limit: a5 sold 40 of 100 @ 30.02 against 29.99/30/30.01, then was cancelled.
    partial = line(report, "ibkr", "limit", "1k-10k")
    assert execution_cells(partial) == (
        "ibkr", "limit", "1k-10k", "1", "3000.00", "0.0%", "100.0%", "0", "0", "0", "30.0 / 30.0 / 30.0",
        "150.0 / 150.0 / 150.0", "-",
        "1", "1.20", "0.0300", "-0.0400", "-13.33", "0.40", "0.0100", "0.33",
    )  # fmt: skip

    # ibkr market: a4's second attempt, 1,000 @ 150.05 against 149.95/150/150.05.
    large = line(report, "ibkr", "market", ">=100k")
    assert (large.improvement_usd, large.effective_spread_usd, large.fees, large.filled_value) == (
        D(0),
        D(100),
        D(1),
        D(150050),
    )
    assert execution_cells(large)[10:] == (
        "45.0 / 45.0 / 45.0", "200.0 / 200.0 / 200.0", "200.0 / 200.0 / 200.0", "1", "0.00", "0.0000", "0.1000",
        "6.67", "1.00", "0.0010", "0.01",
    )  # fmt: skip

    alpaca = line(report, "alpaca")
    assert (alpaca.orders, alpaca.notional, alpaca.filled, alpaca.cancelled, alpaca.rejected) == (5, D(153100), 3, 1, 1)
    assert (alpaca.fill_rate, alpaca.cancel_rate, alpaca.failovers) == (D("0.6"), D("0.2"), 1)
    assert close(alpaca.first_fill_ms, (60, 92, 99.2))
    assert close(alpaca.ack_ms, (14.25, 18.8, 19.88))  # of 12.5, 20, 8, 16 ms; a4 was refused

    ibkr = line(report, "ibkr")
    assert close(ibkr.first_fill_ms, (175, 195, 199.5))  # of 200 and 150 ms
    assert close(ibkr.complete_fill_ms, (200, 200, 200))  # a5 never completed
    assert close(ibkr.ack_ms, (37.5, 43.5, 44.85))  # of 45 and 30 ms
    assert (ibkr.improvement_usd, ibkr.effective_spread_usd, ibkr.quoted_value) == (D("1.20"), D("98.40"), D(151200))
    assert execution_cells(ibkr)[14:] == ("1.20", "0.0012", "0.0946", "6.51", "1.40", "0.0013", "0.01")

    router = line(report, "router", "market", "unknown")  # a6: refused before any broker was chosen
    assert (router.orders, router.notional, router.rejected, router.quoted_orders) == (1, D(0), 1, 0)
    assert router.ack_ms is None
    assert close(line(report, "robinhood").ack_ms, (25, 25, 25))

    total = line(report, None)
    assert (total.orders, total.notional, total.filled, total.cancelled, total.rejected, total.failovers) == (
        9, D(306120), 5, 2, 2, 1
    )  # fmt: skip
    assert total.fees == D("1.80") and total.filled_shares == D(1082)
    assert close(total.ack_ms, (20, 36, 44.1))  # of 12.5, 20, 8, 45, 30, 25, 16 ms


async def test_the_routing_table_splits_directed_orders_from_those_mbx_chose(book: Any) -> None:
    """An intent that named its broker, a prefer rule and a require rule count as directed; the
    default and the score as chosen by mbx; shares are of the month's route decisions."""
    engine, _ = book
    report = await execution_report(engine, "2026-11")
    assert [(r.broker, r.rule, r.directed, r.routes, r.share) for r in report.routing] == [
        ("alpaca", "default:equity", False, 4, D("0.5")),
        ("alpaca", "default:equity", True, 1, D("0.125")),
        ("ibkr", "preference", True, 1, D("0.125")),
        ("ibkr", "score", False, 1, D("0.125")),
        ("robinhood", "rule:small-to-robinhood", True, 1, D("0.125")),
    ]


async def test_the_cli_writes_each_format_and_says_when_a_month_is_empty(book: Any, tmp_path: Path) -> None:
    """md, csv and a self-contained html page carry the figures; a month with nothing says so."""
    _, settings = book
    env = {"MBX_DATABASE_URL": settings.database_url, "COLUMNS": "200"}
    runner = CliRunner()

    async def mbx(*args: str) -> Result:
        # In a thread: the command runs its own event loop.
        return await asyncio.to_thread(runner.invoke, app, list(args), env=env)

    result = await mbx("report", "execution", "--month", "2026-11")
    assert result.exit_code == 0, result.output
    assert "| alpaca | market | 1k-10k | 3 | 3000.00 | 100.0% |" in result.output
    assert "| alpaca | 5 | 62.5% | 1 | 4 |" in result.output
    out = tmp_path / "report.html"
    result = await mbx("report", "execution", "--month", "2026-11", "--format", "html", "--out", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<td>-13.33</td>" in page
    assert "http" not in page and "<script" not in page and "<link" not in page
    result = await mbx("report", "execution", "--month", "2026-11", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert (
        "ibkr,limit,1k-10k,1,3000.00,0.0%,100.0%,0,0,0,30.0 / 30.0 / 30.0,150.0 / 150.0 / 150.0,-,1,1.20"
        in result.output
    )
    result = await mbx("report", "execution", "--month", "2026-09")
    assert result.exit_code == 0, result.output
    assert "no orders or route decisions are recorded for 2026-09" in result.output


async def kept_orders(engine: AsyncEngine, month: str) -> list[Any]:
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT orders, report -> 'rows' -> -1 ->> 'orders' AS total FROM execution_report_months"
                " WHERE month = :m"
            ),
            {"m": month},
        )
        return [tuple(r) for r in found]


async def mark_kept_total(engine: AsyncEngine, month: str, orders: int) -> None:
    """Write another order count into the kept report's total line, to tell it apart."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE execution_report_months SET report = jsonb_set(report, ARRAY['rows', "
                "(jsonb_array_length(report -> 'rows') - 1)::text, 'orders'], to_jsonb(CAST(:n AS int)))"
                " WHERE month = :m"
            ),
            {"m": month, "n": orders},
        )


async def test_a_closed_month_is_kept_once_computed_and_computed_again_when_its_orders_change(book: Any) -> None:
    """The current month is never kept; a closed month is computed once, then read from the kept
    report with the same figures; an order of the month changed since is computed again, and so
    is a report computed within SETTLE of its month's last change."""
    engine, _ = book
    open_month = await execution_report(engine, "2026-11", now=datetime(2026, 11, 20, tzinfo=UTC))
    assert await kept_orders(engine, "2026-11") == []

    computed = await execution_report(engine, "2026-11")
    assert computed == open_month
    assert await kept_orders(engine, "2026-11") == [(9, "9")]
    assert await execution_report(engine, "2026-11") == computed  # read back to the cent and the float

    await mark_kept_total(engine, "2026-11", 999)
    assert line(await execution_report(engine, "2026-11"), None).orders == 999  # served from the table

    async with engine.begin() as conn:  # a3's cancel turns out a fill: written as the aggregator does
        await conn.execute(text("UPDATE orders SET status = 'filled', updated_at = now() WHERE intent_id = 'a3'"))
    changed = await execution_report(engine, "2026-11")
    assert (line(changed, None).orders, line(changed, None).filled, line(changed, None).cancelled) == (9, 6, 1)
    await mark_kept_total(engine, "2026-11", 999)
    again = await execution_report(engine, "2026-11")  # changed within SETTLE: not trusted yet
    assert again == changed and line(again, None).orders == 9
