"""compose.yaml runs the commands the code really has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from contracts import BrokerName
from workers.cli.main import app

ROOT = Path(__file__).resolve().parents[2]


def load_compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def parse_cli(args: list[str]) -> dict[str, Any]:
    """Check ``mbx <args>`` against the real CLI's commands and choices; returns what it names."""
    commands = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    command, *rest = args
    if command not in commands:
        raise ValueError(f"mbx has no command {command!r}")
    parsed: dict[str, Any] = {"command": command}
    if command == "worker":
        kind, *options = rest
        if kind not in ("router", "executor", "aggregator"):
            raise ValueError(f"unknown worker {kind!r}")
        parsed["kind"] = kind
        opts = dict(zip(options[::2], options[1::2], strict=True))
        if set(opts) - {"--broker"}:
            raise ValueError(f"unknown options {sorted(set(opts) - {'--broker'})}")
        if "--broker" in opts:
            parsed["broker"] = BrokerName(opts["--broker"])
        if kind == "executor" and "broker" not in parsed:
            raise ValueError("an executor needs --broker")
    return parsed


def test_compose_has_every_service_of_the_design() -> None:
    """NATS, Postgres, migrate, router, one executor per broker, aggregator."""
    services = load_compose()["services"]
    expected = {"nats", "postgres", "migrate", "router", "aggregator"} | {f"executor-{b}" for b in BrokerName}
    assert expected <= services.keys()


def test_nats_in_compose_fsyncs_every_write() -> None:
    """The compose profile is the durable one: sync_interval always."""
    compose = load_compose()
    assert "sync_interval: always" in compose["configs"]["nats_conf"]["content"]


def test_every_compose_command_parses_with_the_real_cli() -> None:
    """Each worker service's command is a valid `mbx` invocation (unknown options or brokers fail)."""
    for name, service in load_compose()["services"].items():
        command = service.get("command")
        if not command or name in ("nats",):
            continue
        parsed = parse_cli(list(command))
        if name.startswith("executor-"):
            assert parsed["kind"] == "executor"
            assert parsed["broker"] == BrokerName(name.removeprefix("executor-"))
        elif name in ("router", "aggregator"):
            assert parsed["kind"] == name
        elif name == "migrate":
            assert parsed["command"] == "migrate"


def test_a_bad_command_would_be_caught() -> None:
    """The check above is real: unknown commands, workers and brokers are refused."""
    for bad in (
        ["wroker", "router"],
        ["worker", "routr"],
        ["worker", "executor", "--broker", "etrade"],
        ["worker", "executor"],
    ):
        try:
            parse_cli(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")
