"""`mbx up`, `down`, `worker`, `migrate`, `schemas`: running the system."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Annotated

import typer

from contracts import (
    BrokerName,
)
from workers.cli.common import (
    EXIT_USAGE,
    RealMoneyRefused,
    console,
    fail,
    resolve_database_url,
    resolve_nats_url,
    settings_and_config,
    startable,
)
from workers.domain.config import ConfigError, MbxConfig
from workers.platform.logs import configure_logging
from workers.platform.settings import Settings
from workers.platform.topology import WORKER_KINDS

if TYPE_CHECKING:
    from workers.ops.security import SecuritySetup

app = typer.Typer()


def runnable_config(live: bool = False) -> tuple[Settings, MbxConfig]:
    """Settings and config, with every adapter and quote source they name known and their
    credentials set (checked before anything starts, so a typo stops `mbx up` at once with the
    key named), and real money traded only with the opt-in (``--live`` or ``MBX_LIVE=1``)."""
    from workers.venues.factory import live_brokers  # noqa: PLC0415

    settings, config = settings_and_config()
    allowed = live or settings.live
    try:
        config = startable(config, allowed)
    except RealMoneyRefused as exc:
        fail(str(exc), EXIT_USAGE)
    except ConfigError as exc:
        fail(f"invalid configuration: {exc}", EXIT_USAGE)
    if allowed and live_brokers(config):
        console.print(f"[bold red]LIVE TRADING:[/] {', '.join(live_brokers(config))} will trade real money")
    return settings, config


def with_cluster(settings: Settings, cluster: int) -> Settings:
    """The stream copies a cluster of ``cluster`` embedded nodes keeps: MBX_STREAM_REPLICAS when
    set, else 3 (or every node of a two-node cluster); never more copies than nodes."""
    if cluster == 1:
        if settings.stream_replicas > 1 and not settings.nats_url:
            fail(
                f"MBX_STREAM_REPLICAS={settings.stream_replicas} needs a cluster: add --cluster 3 "
                "(or set MBX_STREAM_REPLICAS=1)",
                EXIT_USAGE,
            )
        return settings
    if settings.nats_url:
        fail("--cluster starts embedded nats-servers: unset MBX_NATS_URL, or leave --cluster out", EXIT_USAGE)
    replicas = settings.stream_replicas if "stream_replicas" in settings.model_fields_set else min(cluster, 3)
    if replicas > cluster:
        fail(f"MBX_STREAM_REPLICAS={replicas} is more copies than --cluster {cluster} has nodes", EXIT_USAGE)
    return settings.model_copy(update={"stream_replicas": replicas})


def secured(settings: Settings, config: MbxConfig) -> SecuritySetup:
    """The security set-up in the data directory, made first if there is none."""
    from workers.cli.security import DEFAULT_STRATEGIES, default_directory  # noqa: PLC0415
    from workers.ops import security  # noqa: PLC0415
    from workers.ops.errors import OperatorError  # noqa: PLC0415

    if settings.nats_url:
        fail("--secure starts the embedded nats-server secured: unset MBX_NATS_URL", EXIT_USAGE)
    directory = default_directory(settings.data_dir)
    try:
        if not (directory / "users.json").exists():
            console.print(
                f"[bold]writing NATS users, permissions and TLS[/bold] to {directory} "
                f"(strategies: {', '.join(DEFAULT_STRATEGIES)}; `mbx security init --strategy ...` for yours)"
            )
            return security.init(directory, settings.subjects, DEFAULT_STRATEGIES, config.enabled_brokers())
        setup = security.load(directory)
        for broker in config.enabled_brokers():
            security.access(setup, f"executor-{broker}")  # every enabled broker has its user
    except OperatorError as exc:
        fail(str(exc), EXIT_USAGE)
    return setup


LiveOption = Annotated[
    bool,
    typer.Option("--live", help="Allow brokers that trade real money (no paper environment, or paper_trading: false)."),
]


@app.command()
def up(
    nats_port: Annotated[int, typer.Option(help="Port of the embedded nats-server.")] = 4222,
    pg_port: Annotated[int, typer.Option(help="Port of the embedded PostgreSQL.")] = 54329,
    production_durability: Annotated[
        bool, typer.Option("--production-durability", help="Embedded NATS fsyncs every write (sync_interval: always).")
    ] = False,
    live: LiveOption = False,
    dashboard_port: Annotated[int, typer.Option(help="Port of the dashboard.")] = 8501,
    no_dashboard: Annotated[bool, typer.Option("--no-dashboard", help="Do not start the dashboard.")] = False,
    cluster: Annotated[
        int,
        typer.Option(
            min=1,
            max=7,
            help="Embedded nats-servers: a cluster of this many on loopback (clients on --nats-port and up, "
            "routes +2000, monitoring +4000), each stream kept on 3 of them unless MBX_STREAM_REPLICAS says.",
        ),
    ] = 1,
    replicas: Annotated[
        int, typer.Option(min=1, max=8, help="Processes of each worker, sharing its durable consumers.")
    ] = 1,
    metrics_port: Annotated[
        int,
        typer.Option(
            min=0, max=65000, help="Prometheus metrics of the first worker; the others take the next ports (0: none)."
        ),
    ] = 9464,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="NATS with a user per role, their permissions and TLS, from `mbx security init` "
            "(made now, for strategy cli, if there is none).",
        ),
    ] = False,
) -> None:
    """Start NATS, PostgreSQL, every worker and the dashboard; Ctrl-C stops it all.

    Example: mbx up --nats-port 4333 --no-dashboard
    Example: mbx up --cluster 3 --replicas 2
    Example: mbx up --secure
    """
    settings, config = runnable_config(live)
    settings = with_cluster(settings, cluster)
    if live:
        os.environ["MBX_LIVE"] = "1"  # the worker processes it starts inherit the opt-in
    if production_durability:
        settings = settings.model_copy(update={"durability": "production"})
    from workers.devstack.stack import Stack, read_stack  # noqa: PLC0415

    running = read_stack(settings.data_dir)
    if running:
        fail(f"mbx is already running (pid {running['pid']}, NATS {running['nats_url']}); stop it with `mbx down`")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        code = Stack(
            settings,
            config,
            nats_port=nats_port,
            pg_port=pg_port,
            dashboard_port=None if no_dashboard else dashboard_port,
            cluster=cluster,
            replicas=replicas,
            metrics_port=metrics_port,
            security=secured(settings, config) if secure else None,
            console=console,
        ).run()
    except RuntimeError as exc:
        fail(str(exc))
    raise typer.Exit(code)


@app.command()
def dashboard(
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8501,
    address: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
) -> None:
    """Serve the dashboard (broker status, portfolio, routing, configuration) in the foreground.

    It connects to the running stack (or MBX_NATS_URL / MBX_DASHBOARD_DATABASE_URL) as the
    database role mbx_dashboard, which can read and append audit rows only.

    Example: mbx dashboard --port 8502
    """
    import subprocess  # noqa: PLC0415

    from workers.devstack import dashboard as served  # noqa: PLC0415
    from workers.devstack.processes import port_free  # noqa: PLC0415
    from workers.platform.settings import dashboard_database_url  # noqa: PLC0415

    settings, _ = settings_and_config()
    if not port_free("127.0.0.1", port):
        fail(f"port {port} is in use (is the dashboard of `mbx up` already there?); use --port", EXIT_USAGE)
    nats_url = resolve_nats_url(settings)
    reader = dashboard_database_url(settings, resolve_database_url(settings))
    console.print(f"dashboard: [bold]{served.url(port, address)}[/bold] (Ctrl-C stops it)")
    env = served.environment(nats_url, reader, settings.subject_prefix)
    try:
        code = subprocess.call(served.command(port, address), env=env)  # noqa: S603  (our own arguments)
    except KeyboardInterrupt:
        code = 0
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
    kind: Annotated[str, typer.Argument(help="router, executor, aggregator or parents.")],
    broker: Annotated[BrokerName | None, typer.Option(help="The executor's broker.")] = None,
    live: LiveOption = False,
) -> None:
    """Run one worker in the foreground (what `mbx up` and compose start).

    Example: MBX_NATS_URL=nats://127.0.0.1:4222 mbx worker executor --broker alpaca
    """
    settings, config = runnable_config(live)
    configure_logging(settings.log_level, settings.log_format)
    if kind not in WORKER_KINDS:
        fail(f"unknown worker {kind!r}: use router, executor, aggregator or parents", EXIT_USAGE)
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
    from workers.platform.db import migrate as migrations  # noqa: PLC0415

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
    from workers.platform.schemas import write_schemas  # noqa: PLC0415

    stale = write_schemas(check=check)
    if check and stale:
        fail("out of date: " + ", ".join(stale) + " (run `make schemas`)")
    console.print("schemas are up to date" if check else "schemas written to contracts/schemas/")
