"""`mbx report execution` refuses a bad month or format with a message, before any database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from workers.cli.main import app
from workers.readmodel.execution_report import BadMonth, month_window


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--month", "2026-13"], "'2026-13' is not a month: write it YYYY-MM"),
        (["--month", "Nov 2026"], "'Nov 2026' is not a month"),
        (["--month", "2026-1"], "'2026-1' is not a month"),
        (["--month", "2026-11", "--format", "pdf"], "unknown format 'pdf': use one of md, csv, html"),
    ],
)
def test_a_bad_month_or_format_exits_2_with_a_message_and_no_traceback(args: list[str], message: str) -> None:
    """The command names what is wrong and how to write it, and exits with the usage code."""
    env = {"MBX_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "COLUMNS": "200"}
    result = CliRunner().invoke(app, ["report", "execution", *args], env=env)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_a_missing_month_is_a_usage_error() -> None:
    """--month is required."""
    result = CliRunner().invoke(app, ["report", "execution"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "--month" in result.output


def test_a_month_is_its_utc_calendar_month_december_ending_in_january() -> None:
    """The window starts at the month's first instant and ends at the next month's."""
    assert month_window("2026-11") == (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    assert month_window("2026-12") == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    with pytest.raises(BadMonth):
        month_window("2026-00")
