"""compose.yaml runs the commands the code really has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from contracts import BrokerName
from workers.cli.main import app
from workers.platform.topology import WORKER_KINDS

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
        if kind not in WORKER_KINDS:
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
    """NATS, Postgres, migrate, router, one executor per broker, aggregator, parent orders."""
    services = load_compose()["services"]
    expected = {"nats", "postgres", "migrate", "router", "aggregator", "parents"} | {
        f"executor-{b}" for b in BrokerName
    }
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
        elif name in ("router", "aggregator", "parents"):
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


def merged_cluster_compose() -> dict[str, Any]:
    """compose.yaml with compose.cluster.yaml laid over it, as `docker compose -f ... -f ...`
    merges them (mappings merged key by key, anything else replaced)."""

    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            return {
                k: merge(base[k], over[k]) if k in base and k in over else over.get(k, base.get(k)) for k in base | over
            }
        return over

    return dict(merge(load_compose(), yaml.safe_load((ROOT / "compose.cluster.yaml").read_text())))


def test_the_cluster_variant_runs_three_routed_nodes_and_two_of_every_worker() -> None:
    compose = merged_cluster_compose()
    services = compose["services"]
    nodes = {name: s for name, s in services.items() if name == "nats" or name.startswith("nats-")}
    assert len(nodes) == 3
    names, routes = set(), set()
    for node in nodes.values():
        flags = dict(zip(node["command"][2::2], node["command"][3::2], strict=True))
        names.add(flags["--name"])
        routes.add(flags["--routes"])
        assert flags["--cluster_name"] == "mbx"
    assert len(names) == 3, "every node needs a name of its own"
    (route_list,) = routes
    assert sorted(r.split("//")[1].split(":")[0] for r in route_list.split(",")) == sorted(nodes)
    assert {v.split(":")[0] for s in nodes.values() for v in s.get("volumes", [])} >= {"nats-data-2", "nats-data-3"}
    for name, service in services.items():
        if name in ("router", "aggregator") or name.startswith("executor-"):
            env = service["environment"]
            assert sorted(u.split("//")[1].split(":")[0] for u in env["MBX_NATS_URL"].split(",")) == sorted(nodes)
            assert env["MBX_STREAM_REPLICAS"] == "3"
            assert env["MBX_DATABASE_URL"]  # kept from compose.yaml
            assert service["deploy"]["replicas"] == 2
            parse_cli(list(service["command"]))
