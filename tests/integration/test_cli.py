"""The `mbx` command line, driven as a user would, against the session's real servers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import BrokerName
from tests.builders import OPTION, intent_payload
from tests.conftest import Pipeline, eventually, exposure_where, fetch_all, stream_messages
from tests.integration.test_executor_flows import order_row
from tests.integration.test_failover import BrokeVenue
from tests.integration.test_walking_skeleton import publish_json
from tests.servers import Servers
from workers.devstack.processes import free_port

pytestmark = pytest.mark.integration


async def mbx(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> tuple[int, str]:
    """Run `python -m workers <args>` without blocking the in-process workers."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workers",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.fixture
def cli_env(servers: Servers) -> dict[str, str]:
    return {"MBX_NATS_URL": servers.nats_url, "MBX_DATABASE_URL": servers.database_url}


async def test_submit_prints_the_route_and_the_fill(pipeline: Pipeline, cli_env: dict[str, str]) -> None:
    """`mbx submit` for 10 AAPL shows the route to alpaca and the fill."""
    code, out = await mbx("submit", "--symbol", "AAPL", "--quantity", "10", env=cli_env)
    assert code == 0, out
    assert "routed to alpaca" in out
    assert "rule default:equity" in out
    assert "filled at alpaca 10 @" in out


async def test_submit_takes_a_pairs_asset_class_from_its_symbol_and_says_so(
    pipeline: Pipeline, cli_env: dict[str, str]
) -> None:
    """0.01 BTC-USD without --asset-class is crypto (it once went to Robinhood as a fractional
    equity); --asset-class still decides when given."""
    code, out = await mbx("submit", "--symbol", "btc-usd", "--quantity", "0.01", env=cli_env)
    assert code == 0, out
    assert "BTC-USD: crypto (from the symbol" in out
    assert "rule default:crypto" in out and "filled at coinbase 0.01 @" in out
    code, out = await mbx("submit", "--symbol", "BRK-B", "--quantity", "1", env=cli_env)
    assert code == 0, out
    assert "from the symbol" not in out and "rule default:equity" in out


async def test_submit_takes_the_order_type_from_the_prices_given(
    pipeline: Pipeline, cli_env: dict[str, str], nc: NatsClient
) -> None:
    """Without --order-type, --limit-price sends a limit order, --stop-price a stop order and both
    a stop-limit order."""
    expected: dict[str, tuple[str, str | None, str | None]] = {}
    for prices, order_type in [
        (("--limit-price", "5"), "limit"),
        (("--stop-price", "5"), "stop"),
        (("--limit-price", "6", "--stop-price", "5"), "stop_limit"),
    ]:
        intent_id = f"priced-{os.urandom(4).hex()}"
        args = ("submit", "--symbol", "AAPL", "--quantity", "1", "--intent-id", intent_id, "--timeout", "1", *prices)
        _, out = await mbx(*args, env=cli_env)  # a resting order ends the wait unfinished: exit 1
        assert "submitted" in out, out
        given = dict(zip(prices[::2], prices[1::2], strict=True))
        expected[intent_id] = (order_type, given.get("--limit-price"), given.get("--stop-price"))
    stored = [json.loads(m) for m in await stream_messages(nc, "ORDERS", "mbx.orders.intent.cli")]
    sent = {i["intent_id"]: (i["order_type"], i.get("limit_price"), i.get("stop_price")) for i in stored}
    assert {k: sent.get(k) for k in expected} == expected


async def test_submit_reads_an_intent_file(pipeline: Pipeline, cli_env: dict[str, str], tmp_path: Path) -> None:
    """An intent in YAML (or JSON) is sent as written."""
    intent = tmp_path / "intent.yaml"
    intent.write_text(
        "intent_id: file-intent-" + os.urandom(4).hex() + "\nstrategy_id: filebot\n"
        "symbol: ETH-USD\nasset_class: crypto\nside: buy\nquantity: '0.25'\n"
    )
    code, out = await mbx("submit", "--file", str(intent), env=cli_env)
    assert code == 0, out
    assert "routed to coinbase" in out
    assert "filled at coinbase 0.25 @" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "--symbol", "AAPL"], "give exactly one of quantity or notional"),
        (["submit", "--symbol", "AAPL", "--quantity", "ten"], "--quantity: 'ten' is not a number"),
        (["submit", "--quantity", "1"], "give --symbol"),
        (["submit", "--symbol", "AAPL", "--quantity", "1", "--order-type", "limit"], "limit_price is required"),
        (["worker", "executor"], "an executor needs --broker"),
        (["worker", "scheduler"], "unknown worker 'scheduler'"),
    ],
)
async def test_usage_errors_exit_2_with_a_reason_and_no_traceback(args: list[str], message: str) -> None:
    """Bad input is explained, not traced back."""
    code, out = await mbx(*args, env={"MBX_NATS_URL": "nats://127.0.0.1:1"})
    assert code == 2, out
    assert message in " ".join(out.split())
    assert "Traceback" not in out


async def test_unreachable_nats_names_the_url_and_how_to_start_it() -> None:
    """With no server listening, submit says which URL it tried and how to start the stack."""
    url = f"nats://127.0.0.1:{free_port()}"
    code, out = await mbx("submit", "--symbol", "AAPL", "--quantity", "1", env={"MBX_NATS_URL": url})
    flat = " ".join(out.split())
    assert code == 1
    assert f"cannot reach NATS at {url}" in flat
    assert "make run" in flat
    assert "Traceback" not in out


async def test_invalid_config_file_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    """A typo in the YAML config stops the command with the bad key named."""
    config = tmp_path / "mbx.yaml"
    config.write_text("brokers:\n  alpaca:\n    enabeld: true\n")
    code, out = await mbx("worker", "router", env={"MBX_CONFIG_FILE": str(config)})
    assert code == 2
    assert "brokers.alpaca.enabeld: unknown key" in " ".join(out.split())


ALPACA_KEYS = "    credentials: {api_key: '${ALPACA_API_KEY}', secret_key: '${ALPACA_SECRET_KEY}'}\n"


UNRUNNABLE_CONFIGS = [
    (
        "brokers:\n  alpaca:\n    adapter: nonsense\n",
        "brokers.alpaca.adapter: unknown adapter 'nonsense' "
        "(known: alpaca, coinbase, ibkr, robinhood_crypto, schwab, simulated)",
    ),
    (
        "market_data:\n  source: nonsense\n",
        "market_data.source: unknown quote source 'nonsense' (known: alpaca, coinbase, ibkr, simulated)",
    ),
    ("brokers:\n  coinbase:\n    adapter: alpaca\n", "brokers.coinbase.adapter: 'alpaca' is alpaca's adapter"),
    (
        "brokers:\n  alpaca:\n    adapter: alpaca\n" + ALPACA_KEYS,
        "brokers.alpaca.credentials.api_key: environment variable ALPACA_API_KEY is not set",
    ),
    (
        "brokers:\n  alpaca:\n    adapter: alpaca\n    paper_trading: false\n" + ALPACA_KEYS,
        "refusing to start: alpaca would trade real money; start with --live (or MBX_LIVE=1) to allow it",
    ),
]
"""Config files `mbx up` refuses to start with (and `mbx config validate` calls invalid), and
the words that say why."""
UNRUNNABLE_IDS = [
    "unknown adapter",
    "unknown quote source",
    "another broker's adapter",
    "keys unset",
    "live without opt-in",
]


@pytest.mark.parametrize(("yaml_text", "key"), UNRUNNABLE_CONFIGS, ids=UNRUNNABLE_IDS)
async def test_a_config_that_cannot_run_stops_mbx_up_naming_why(tmp_path: Path, yaml_text: str, key: str) -> None:
    """`mbx up` refuses an unknown adapter or quote source, missing keys, and real money without
    the opt-in, before starting anything."""
    config = tmp_path / "mbx.yaml"
    config.write_text(yaml_text)
    env = {"MBX_CONFIG_FILE": str(config), "MBX_DATA_DIR": str(tmp_path / "data")}
    if "live" in key:  # keys set: only the opt-in is missing
        env |= {"ALPACA_API_KEY": "PKTEST0000", "ALPACA_SECRET_KEY": "not-a-real-secret"}
    code, out = await mbx("up", "--nats-port", str(free_port()), "--pg-port", str(free_port()), env=env)
    assert code == 2, out
    assert key in " ".join(out.split())
    assert "PKTEST0000" not in out and "not-a-real-secret" not in out
    assert not (tmp_path / "data" / "stack.json").exists()


async def test_schemas_check_passes_on_the_committed_files() -> None:
    """`mbx schemas --check` is what CI-minded users run; it agrees with the repo."""
    code, out = await mbx("schemas", "--check")
    assert code == 0, out


async def test_fault_switches_a_simulated_broker_at_runtime(pipeline: Pipeline, cli_env: dict[str, str]) -> None:
    code, out = await mbx("fault", "schwab", "outage=true", "latency_ms=20", env=cli_env)
    assert code == 0, out
    assert pipeline.venues[BrokerName.SCHWAB].faults.outage is True
    assert "outage" in out and "True" in out
    rate = re.search(r"rate limit: at most (\d+) of (\d+) requests .* (\d+) refused with 429", out)
    window = pipeline.venues[BrokerName.SCHWAB].rate
    assert rate is not None, out
    assert int(rate[1]) <= window.peak and int(rate[2]) == window.limit and int(rate[3]) == window.refused
    code, out = await mbx("fault", "schwab", "outage=off", "latency_ms=0", env=cli_env)
    assert code == 0, out
    assert pipeline.venues[BrokerName.SCHWAB].faults.outage is False
    code, out = await mbx("fault", "schwab", "reject_next=-2", env=cli_env)
    assert code == 2 and "bad value" in out
    code, out = await mbx("fault", "schwab", "explode", env=cli_env)
    assert code == 2 and "expected name=value" in out


async def test_fault_says_when_no_executor_answers(servers: Servers, cli_env: dict[str, str]) -> None:
    code, out = await mbx("fault", "ibkr", env={**cli_env, "MBX_SUBJECT_PREFIX": "nobody"})
    assert code == 1
    assert "no executor answers on nobody.control.ibkr" in out


async def test_cancel_a_working_order_then_an_unknown_one(
    pipeline: Pipeline, cli_env: dict[str, str], nc: NatsClient, db: AsyncEngine, tmp_path: Path
) -> None:
    payload = intent_payload(order_type="limit", limit_price="1.00")
    await publish_json(nc, payload)
    await order_row(db, payload["intent_id"], "accepted")
    code, out = await mbx("cancel", payload["intent_id"], "--reason", "test", env=cli_env)
    assert code == 0, out
    assert "cancelled at alpaca (0 filled before the cancel)" in out
    code, out = await mbx("cancel", payload["intent_id"], env=cli_env)
    assert code == 1
    assert "not cancelled: too_late_to_cancel" in out and "(order cancelled)" in out
    request = tmp_path / "cancel.yaml"
    request.write_text("intent_id: never-sent-1\nstrategy_id: filebot\nreason: from a file\n")
    code, out = await mbx("cancel", "--file", str(request), env=cli_env)
    assert code == 1 and "unknown_order" in out
    code, out = await mbx("cancel", env=cli_env)
    assert code == 2 and "--file" in out


async def test_status_shows_brokers_consumers_and_the_aggregator(pipeline: Pipeline, cli_env: dict[str, str]) -> None:
    code, out = await mbx("status", env=cli_env)
    assert code == 0, out
    assert "reachable" in out
    for broker in ("alpaca", "coinbase", "ibkr", "robinhood", "schwab"):
        assert broker in out
    assert "executor-alpaca" in out and "aggregator-executions" in out and "router" in out
    code, out = await mbx("brokers", env=cli_env)
    assert code == 0 and "rate headroom" in out and "up" in out and "warning" not in out

    # A warning (a login about to end) shows while the broker is still up.
    pipeline.venues[BrokerName.SCHWAB].switch_faults({"warning": "schwab: the login expires in 5h 0m"})
    await asyncio.sleep(1.5)  # the next heartbeat
    code, out = await mbx("status", env=cli_env)
    assert code == 0 and "warning" in out and "the login expires in 5h 0m" in out
    pipeline.venues[BrokerName.SCHWAB].switch_faults({"warning": ""})


async def test_status_without_a_stack_says_which_url_and_how_to_start(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    code, out = await mbx("status", env={"MBX_NATS_URL": url, "MBX_DATA_DIR": str(tmp_path)})
    assert code == 1
    assert url in out and "make run" in out and "Traceback" not in out


async def test_portfolio_lists_what_was_traded(
    pipeline: Pipeline, cli_env: dict[str, str], nc: NatsClient, db: AsyncEngine
) -> None:
    payload = intent_payload(symbol="CLIP", quantity="3")
    await publish_json(nc, payload)
    await order_row(db, payload["intent_id"], "filled")
    code, out = await mbx("portfolio", "--sync", env=cli_env)
    assert code == 0, out
    assert "CLIP" in out and "portfolio value" in out
    code, out = await mbx("portfolio", "--by", "broker", env=cli_env)
    assert code == 0, out
    assert "alpaca" in out and "%" in out


async def test_explain_tells_both_attempts_of_a_failed_over_intent(
    start_pipeline: Any, cli_env: dict[str, str], nc: NatsClient, db: AsyncEngine
) -> None:
    await start_pipeline(venue_overrides={BrokerName.SCHWAB: BrokeVenue(BrokerName.SCHWAB)})
    payload = intent_payload(**OPTION)
    await publish_json(nc, payload)

    async def second_attempt_filled() -> bool:
        rows = await fetch_all(
            db,
            "SELECT 1 FROM orders WHERE intent_id = :i AND attempt = 2 AND status = 'filled'",
            i=payload["intent_id"],
        )
        return bool(rows)

    await eventually(second_attempt_filled)
    code, out = await mbx("explain", payload["intent_id"], env=cli_env)
    assert code == 0, out
    assert "attempt 1: routed to schwab by default:option" in out
    assert "failed over: insufficient_buying_power" in out
    assert "attempt 2: routed to" in out and "(after schwab failed)" in out
    assert "left out: schwab (failed)" in out
    assert "candidate" in out and "total" in out
    assert "fill " in out and "order at" in out and ": filled, 2 filled @" in out
    code, out = await mbx("explain", "never-sent-2", env=cli_env)
    assert code == 1 and "nothing is recorded" in out


async def start_tail(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    """`mbx tail ...` in the background, returned once it follows its subject."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workers",
        "tail",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200", **env},
    )
    assert proc.stderr is not None
    banner = await asyncio.wait_for(proc.stderr.readline(), 90)
    assert b"following" in banner, banner
    return proc


async def test_tail_follows_one_strategys_fills_and_routes(
    pipeline: Pipeline, cli_env: dict[str, str], nc: NatsClient
) -> None:
    fills = await start_tail("fills", "--strategy", "tailbot", "--json", "--count", "2", "--for", "30", env=cli_env)
    routes = await start_tail("routes", "--strategy", "tailbot", "--count", "1", "--for", "30", env=cli_env)
    await publish_json(nc, intent_payload(strategy_id="other"), strategy="other")
    mine = [intent_payload(strategy_id="tailbot", symbol=s) for s in ("AAPL", "MSFT")]
    for payload in mine:
        await publish_json(nc, payload, strategy="tailbot")
    out, _ = await asyncio.wait_for(fills.communicate(), 90)
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert sorted(f["intent_id"] for f in lines) == sorted(p["intent_id"] for p in mine)
    assert {f["strategy_id"] for f in lines} == {"tailbot"}
    out, _ = await asyncio.wait_for(routes.communicate(), 90)
    assert fills.returncode == 0 and routes.returncode == 0
    assert "route" in out.decode() and "-> alpaca (attempt 1, default:equity)" in out.decode()


async def test_submit_csv_sends_every_row_and_summarises(
    pipeline: Pipeline, cli_env: dict[str, str], tmp_path: Path, nc: NatsClient
) -> None:
    # The CSV sells 3 MSFT: held first (and seen held by the router), so the sale closes a
    # position wherever the test runs.
    code, out = await mbx("submit", "--symbol", "MSFT", "--quantity", "3", "--strategy", "csvbot", env=cli_env)
    assert code == 0 and "filled at alpaca" in out, out
    await exposure_where(
        nc.jetstream(),
        pipeline.settings.subjects,
        lambda s: s.holdings.get(BrokerName.ALPACA, {}).get("MSFT", Decimal(0)) >= 3,
    )
    orders = tmp_path / "orders.csv"
    orders.write_text(
        "symbol,quantity,notional,side,asset_class,tif\n"
        "aapl,10,,buy,equity,\n"
        "MSFT,3,,sell,equity,day\n"
        "SPY,1,,buy,equity,\n"
        "BTC-USD,,250,buy,crypto,\n"
        "ETH-USD,,100,buy,,\n"  # no asset class: the pair is crypto
    )
    code, out = await mbx("submit", "--csv", str(orders), "--strategy", "csvbot", env=cli_env)
    assert code == 0, out
    assert "submitted 5 intents: 5 filled" in out
    assert "filled at: alpaca 3, coinbase 2" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("symbol,quantity,side\nAAPL,10,buy\nMSFT,,buy\nSPY,-1,buy\n")
    code, out = await mbx("submit", "--csv", str(bad), env=cli_env)
    assert code == 2
    assert "2 invalid rows, nothing sent" in out and "line 3" in out and "line 4" in out
