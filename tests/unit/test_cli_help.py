"""Every `mbx` command's --help shows an example (typer's runner, in-process)."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from workers.cli.config import config_app
from workers.cli.dlq import dlq
from workers.cli.main import app


def commands(group: typer.Typer, prefix: list[str]) -> list[list[str]]:
    return [[*prefix, c.name or (c.callback.__name__ if c.callback else "")] for c in group.registered_commands]


def test_every_command_has_an_example_in_its_help() -> None:
    runner = CliRunner()
    every = commands(app, []) + commands(dlq, ["dlq"]) + commands(config_app, ["config"])
    names = {" ".join(c).replace("_", "-") for c in every}
    expected = {"up", "down", "status", "submit", "cancel", "tail", "portfolio", "explain", "dlq list", "config set"}
    assert expected <= names
    for command in every:
        args = [part.replace("_", "-") for part in command]
        result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (args, result.output)
        assert "Example" in result.output, args


def test_loading_the_command_line_loads_no_database_bus_or_dashboard_library() -> None:
    """`mbx` starts every worker process and every operator command: what a command needs is
    loaded when it runs, so a restart after a crash and `mbx --help` stay quick."""
    import subprocess
    import sys

    heavy = ["sqlalchemy", "nats", "psycopg", "faststream", "alembic", "httpx", "streamlit", "pandas", "workers.ops"]
    probe = (
        "import sys, workers.cli.main; "
        f"print(sorted(h for h in {heavy!r} if any(m == h or m.startswith(h + '.') for m in sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr
