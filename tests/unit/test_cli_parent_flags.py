"""`mbx submit`'s parent-order flags: --split [N], --twap DURATION/SLICES, --iceberg QUANTITY and
--jitter PCT, read into the intent's execution block, with a reason for every bad value; and the
parent's reports as `mbx submit` shows them while it follows the parent."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from typer.testing import CliRunner

from contracts import BrokerName, ChildOrder, OrderIntent, ParentReport, ParentStatus
from contracts.messages import Execution, IcebergSpec, SplitSpec, TwapSpec
from tests.builders import make_intent
from workers.cli.main import app
from workers.cli.parent_orders import (
    FlagError,
    ParentFollower,
    execution_block,
    final_line,
    follow_seconds,
    parse_duration,
    parse_twap,
    progress_line,
    with_split_value,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400), (" 45S ", 45), ("1m30s", 90)],
)
def test_a_duration_with_a_unit_reads_as_seconds(text: str, seconds: float) -> None:
    """s, m and h, combined or with decimals, in any case."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30", "m", "30x", "", "-5m", "30m-", "1e3s", "½h"])
def test_a_duration_without_a_unit_or_with_another_is_refused(text: str) -> None:
    """A bare number is refused rather than guessed at (30 seconds or 30 minutes?)."""
    with pytest.raises(FlagError, match="not a duration: give a number with a unit"):
        parse_duration(text)


def test_twap_reads_duration_then_slices() -> None:
    assert parse_twap("30m/10") == (1800, 10)
    assert parse_twap("1h30m/ 9") == (5400, 9)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("30m", "give duration/slices, e.g. 30m/10"),
        ("30m/", "give duration/slices"),
        ("30/10", "'30' is not a duration"),
        ("30m/ten", "slices, after the /, must be a whole number"),
        ("30m/2.5", "must be a whole number"),
    ],
)
def test_a_malformed_twap_says_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(FlagError, match=reason):
        parse_twap(text)


def intent_with(**flags: str) -> OrderIntent:
    """The intent `mbx submit --symbol AAPL --quantity 20000` plus ``flags`` would send."""
    return make_intent(quantity="20000", execution=execution_block(**flags))


def test_split_and_twap_with_jitter_build_the_execution_block_the_contract_takes() -> None:
    """--split --twap 30m/10 --jitter 10%: a TWAP of 10 slices over 1,800 s, each split over up to 5 brokers."""
    intent = intent_with(split="5", twap="30m/10", jitter="10%")
    assert intent.execution == Execution(
        split=SplitSpec(max_brokers=5), twap=TwapSpec(duration_s=1800, slices=10, jitter_pct=10)
    )


def test_split_with_a_number_and_an_iceberg_alone() -> None:
    assert intent_with(split="3").execution == Execution(split=SplitSpec(max_brokers=3))
    assert intent_with(iceberg="100").execution == Execution(iceberg=IcebergSpec(display_quantity=Decimal(100)))


def test_no_flag_is_no_parent() -> None:
    assert execution_block() is None
    assert intent_with().execution is None


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        ({"split": "0"}, "1 to 5"),
        ({"split": "6"}, "1 to 5"),
        ({"split": "two"}, "1 to 5"),
        ({"iceberg": "a lot"}, "--iceberg 'a lot' is not a number"),
        ({"iceberg": "NaN"}, "is not a number"),
        ({"jitter": "10"}, "--jitter moves TWAP slices: give it with --twap"),
        ({"twap": "30m/10", "jitter": "ten"}, "--jitter 'ten' is not a number"),
    ],
)
def test_bad_flag_values_are_refused_with_a_reason(flags: dict[str, str], reason: str) -> None:
    with pytest.raises(FlagError, match=reason):
        execution_block(**flags)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["submit", "--split"], ["submit", "--split=5"]),
        (["submit", "--split", "--twap", "30m/10"], ["submit", "--split=5", "--twap", "30m/10"]),
        (["submit", "--symbol", "AAPL", "--split", "-f", "x"], ["submit", "--symbol", "AAPL", "--split=5", "-f", "x"]),
        (["submit", "--split", "3"], ["submit", "--split", "3"]),
        (["submit", "--split=2"], ["submit", "--split=2"]),
        (["submit", "--split", "-1"], ["submit", "--split", "-1"]),
        (["explain", "--split"], ["explain", "--split"]),
    ],
)
def test_a_bare_split_means_up_to_every_broker(argv: list[str], expected: list[str]) -> None:
    """Only `mbx submit`'s own --split is given its default, and only when no number follows it."""
    assert with_split_value(argv) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "9"], "--split '9': give the most brokers a slice is spread over, 1 to 5"),
        (["--twap", "30/10"], "'30' is not a duration"),
        (["--twap", "5s/2"], "a TWAP lasts at least 10 s"),
        (["--twap", "30m/5000"], "a TWAP has at most 1000 slices"),
        (["--twap", "30m/10", "--iceberg", "100"], "give twap or iceberg, not both"),
        (["--iceberg", "20000"], "must be below the quantity"),
        (["--split", "--broker", "alpaca"], "give broker or split, not both"),
    ],
)
def test_submit_refuses_bad_parent_flags_with_exit_2_and_no_traceback(args: list[str], message: str) -> None:
    """Flags and the contract's bounds are checked before anything connects (NATS is not there)."""
    argv = with_split_value(["submit", "--symbol", "AAPL", "--quantity", "20000", *args])
    result = CliRunner().invoke(app, argv, env={"MBX_NATS_URL": "nats://127.0.0.1:1", "COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_submit_refuses_parent_flags_with_a_file(tmp_path: Any) -> None:
    """A file's intent carries its own execution block: mixing flags in is refused, not guessed at."""
    path = tmp_path / "intent.yaml"
    path.write_text("intent_id: f-1\nstrategy_id: cli\nsymbol: AAPL\nasset_class: equity\nside: buy\nquantity: 10\n")
    result = CliRunner().invoke(app, ["submit", "--file", str(path), "--twap", "30m/10"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "--twap applies to an order given with --symbol" in " ".join(result.output.split())


def test_a_parent_is_followed_for_its_twap_and_a_minute_more() -> None:
    assert follow_seconds(intent_with(twap="30m/10"), None) == 1860
    assert follow_seconds(intent_with(split="5"), None) == 75
    assert follow_seconds(intent_with(), None) == 15
    assert follow_seconds(intent_with(twap="30m/10"), 5) == 5


def parent_report(seq: int, status: ParentStatus, filled: str, **overrides: Any) -> ParentReport:
    children = (
        ChildOrder(intent_id="p-1:0.0", broker=BrokerName.ALPACA, slice_number=0, quantity=Decimal(5),
                   filled_quantity=Decimal(min(int(filled), 5)), status="filled" if int(filled) >= 5 else "accepted"),
        ChildOrder(intent_id="p-1:0.1", broker=BrokerName.IBKR, slice_number=0, quantity=Decimal(5),
                   filled_quantity=Decimal(max(int(filled) - 5, 0)), status="accepted"),
        ChildOrder(intent_id="p-1:1.0", slice_number=1, quantity=Decimal(10), status="planned"),
    )  # fmt: skip
    fields: dict[str, Any] = {
        "message_id": f"parent-p-1-{seq}",
        "intent_id": "p-1",
        "strategy_id": "cli",
        "symbol": "AAPL",
        "side": "buy",
        "status": status,
        "quantity": Decimal(20),
        "filled_quantity": Decimal(filled),
        "children": children,
        "report_seq": seq,
    }
    return ParentReport(**(fields | overrides))


def test_the_follower_shows_each_newer_change_once_and_ends_on_the_final_report() -> None:
    """A stale report (lower report_seq), another parent's and one that changes nothing shown are
    not printed; the final report ends the wait."""
    follower = ParentFollower("p-1")
    assert follower.take(parent_report(1, ParentStatus.WORKING, "0"))
    assert follower.take(parent_report(3, ParentStatus.PARTIALLY_FILLED, "5"))
    assert not follower.take(parent_report(2, ParentStatus.WORKING, "0"))  # late, superseded
    assert not follower.take(parent_report(4, ParentStatus.PARTIALLY_FILLED, "5"))  # nothing new to show
    assert not follower.take(parent_report(9, ParentStatus.FILLED, "20", intent_id="p-2"))
    assert follower.latest is not None and follower.latest.report_seq == 4
    assert not follower.done.is_set()
    assert follower.take(parent_report(5, ParentStatus.FILLED, "20", final=True, average_price=Decimal("100.5")))
    assert follower.done.is_set()


def test_progress_and_final_lines_say_filled_of_quantity_and_children_by_broker() -> None:
    line = progress_line(parent_report(3, ParentStatus.PARTIALLY_FILLED, "7", average_price=Decimal("101.25")))
    assert line == "partially_filled: 7 of 20 (35%) @ 101.25; alpaca 1 (5), ibkr 1 (2), no broker: planned 1"
    final, ok = final_line(
        parent_report(
            6,
            ParentStatus.DONE_WITH_SHORTFALL,
            "7",
            arrival_price=Decimal(100),
            average_price=Decimal("101.25"),
            slippage_bps=125.0,
            reason="2 children rejected",
            final=True,
        )
    )
    assert not ok
    assert "done_with_shortfall" in final and "7 of 20 @ 101.25 (arrival 100, slippage +125.00 bps)" in final
    assert "children: alpaca 1 (5), ibkr 1 (2), no broker: planned 1 (2 children rejected)" in final
    assert final_line(parent_report(7, ParentStatus.CANCELLED, "7", final=True))[1]
