"""What-if on real history: a book recorded through the real pipeline, replayed with another
config through the router's own ``route()``, checked against the live router's preview."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from nats.aio.client import Client as NatsClient

from contracts import BrokerName, OrderIntent, RoutePreview
from tests.builders import CRYPTO, OPTION, intent_payload
from tests.conftest import Pipeline, eventually, fetch_all, unthrottled
from tests.integration.test_cli import mbx
from workers.cli.whatif import run_whatif
from workers.domain.config import MbxConfig, config_to_json, parse_config
from workers.ops import approvals
from workers.ops.errors import OperatorError
from workers.ops.whatif import whatif_report
from workers.platform.bus import jetstream
from workers.platform.db.engine import make_engine
from workers.platform.live_config import write_live_config
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration

RULES: list[dict[str, Any]] = [
    # Crypto away from its two cheapest brokers, so the score (and so the weights) decides.
    {"name": "crypto-elsewhere", "match": {"asset_class": ["crypto"]}, "exclude": ["alpaca", "coinbase"]},
]
BASE: dict[str, Any] = {
    "routing": {"min_fill_samples": 10**9, "weights": {"cost": 0.0, "speed": 0.0, "fill": 1.0}, "rules": RULES},
    # strat2's MSFT order waits for an operator when recorded (record_book approves it).
    "approvals": {"rules": [{"name": "msft-strat2", "match": {"symbol": ["MSFT"], "strategy": ["strat2"]}}]},
}
CHANGED: dict[str, Any] = {
    "routing": {
        "min_fill_samples": 10**9,
        "weights": {"cost": 1.0, "speed": 0.0, "fill": 0.0},
        "rules": [
            *RULES,
            {"name": "msft-ibkr", "match": {"symbol": ["MSFT"]}, "prefer": ["ibkr"]},
            {"name": "options-nowhere", "match": {"asset_class": ["option"]}, "require": ["coinbase"]},
        ],
    },
    "approvals": {"rules": [{"name": "crypto-four-eyes", "match": {"asset_class": ["crypto"]}, "approvers": 2}]},
}
BOOK: list[dict[str, Any]] = [
    {**CRYPTO, "quantity": "1"},
    {},
    {"symbol": "MSFT"},
    OPTION,
    {"quantity": "0.5"},
    {"symbol": "MSFT", "quantity": "3", "strategy_id": "strat2"},
]


def config(raw: dict[str, Any]) -> MbxConfig:
    """``raw`` as the test pipeline runs it (unthrottled): the replay and the live router must
    see the same rate limits, or the recorded queues would weigh differently."""
    return unthrottled(parse_config(raw))


async def record_book(start_pipeline: Callable[..., Awaitable[Pipeline]], isolated: Settings) -> list[OrderIntent]:
    """The book sent through the real pipeline under BASE (the order BASE holds approved by an
    operator); its intent ids once every first route decision and the hold's audit are in Postgres."""
    await start_pipeline(parse_config(BASE), own_settings=isolated)
    sent = []
    nc = await nats.connect(isolated.nats_url or "")
    try:
        for overrides in BOOK:
            payload = intent_payload(**overrides)
            sent.append(OrderIntent.model_validate(payload))
            await nc.jetstream().publish(
                isolated.subjects.intent(payload["strategy_id"]),
                json.dumps(payload).encode(),
                headers={"Nats-Msg-Id": payload["intent_id"]},
            )
        [held] = [i.intent_id for i in sent if i.strategy_id == "strat2"]

        async def waiting() -> bool:
            return held in {h.intent.intent_id for h in await approvals.held(nc.jetstream(), isolated.subjects)}

        await eventually(waiting, timeout=30)
        await approvals.approve(nc.jetstream(), isolated.subjects, held, "alice")
    finally:
        await nc.close()
    ids = [intent.intent_id for intent in sent]
    engine = make_engine(isolated.database_url or "", pool_size=1)
    try:

        async def recorded() -> bool:
            rows = await fetch_all(
                engine, "SELECT 1 FROM multi_broker_routes WHERE attempt = 1 AND intent_id = ANY(:i)", i=ids
            )
            audited = await fetch_all(engine, "SELECT 1 FROM approvals WHERE intent_id = :i", i=held)
            return len(rows) == len(ids) and bool(audited)

        await eventually(recorded, timeout=30)
    finally:
        await engine.dispose()
    return sent


async def live_preview(nc: NatsClient, isolated: Settings, intent: OrderIntent) -> RoutePreview:
    reply = await nc.request(isolated.subjects.route_preview, intent.model_dump_json().encode(), timeout=5)
    return RoutePreview.model_validate_json(reply.data)


def _url(isolated: Settings) -> str:
    return isolated.sqlalchemy_url()


async def test_a_changed_weight_and_new_rules_change_the_decisions_the_live_router_would_make(
    start_pipeline: Callable[..., Awaitable[Pipeline]], isolated: Settings, nc: NatsClient
) -> None:
    """Each decision the replay changes is the one the live router previews under the new config."""
    intents = await record_book(start_pipeline, isolated)
    since = datetime.now(UTC) - timedelta(hours=1)
    changed_config = config(CHANGED)
    result, rejected_unrouted = await run_whatif(_url(isolated), changed_config, since, None)
    assert sorted(r.intent_id for r in result.rows) == sorted(i.intent_id for i in intents)
    assert rejected_unrouted == 0
    by_symbol = {(r.symbol, r.strategy_id): r for r in result.rows}
    crypto = by_symbol["BTC-USD", "strat1"]
    assert (crypto.old_broker, crypto.new_broker) == (BrokerName.ROBINHOOD, BrokerName.IBKR)
    assert crypto.old_rule == crypto.new_rule == "score"
    assert by_symbol["MSFT", "strat1"].new_rule == "rule:msft-ibkr"
    option = next(r for r in result.rows if r.symbol == OPTION["symbol"])
    assert option.rejected and option.new_rule == "rejected:no_eligible_broker"
    assert len(result.changed) == 4  # crypto, both MSFT orders, the option
    assert result.mix_after["rejected"] == 1
    assert {e.rule for e in result.rule_effect()} >= {"rule:msft-ibkr", "default:option", "default:equity"}
    # Held for approval: the crypto order by the new rule; strat2's MSFT order was held when recorded.
    assert [(r.symbol, r.new_hold) for r in result.held] == [("BTC-USD", "crypto-four-eyes")]
    assert [(r.strategy_id, r.old_hold) for r in result.held_before] == [("strat2", "msft-strat2")]

    # The live router under the new config decides each of the same intents the same way.
    await write_live_config(jetstream(nc), isolated.subjects, changed_config)
    recorded = {r.intent_id: r for r in result.rows}

    async def live_rules_apply() -> bool:
        answer = await live_preview(nc, isolated, next(i for i in intents if i.symbol == "MSFT"))
        return answer.decision is not None and answer.decision.rule == "rule:msft-ibkr"

    await eventually(live_rules_apply, timeout=5)
    for intent in intents:
        replayed = recorded[intent.intent_id]
        answer = await live_preview(nc, isolated, intent)
        if answer.decision is None:
            assert replayed.new_broker is None
            assert replayed.new_rule == f"rejected:{answer.rejection_code}", intent.intent_id
        else:
            assert (answer.decision.broker, answer.decision.rule) == (replayed.new_broker, replayed.new_rule)


async def test_the_same_config_changes_no_decision(
    start_pipeline: Callable[..., Awaitable[Pipeline]], isolated: Settings
) -> None:
    """Replayed under the config they were recorded with, the decisions, fees and latencies stay."""
    await record_book(start_pipeline, isolated)
    result, _ = await run_whatif(_url(isolated), config(BASE), datetime.now(UTC) - timedelta(hours=1), None)
    assert len(result.rows) == len(BOOK)
    assert result.changed == []
    assert [(r.strategy_id, r.old_hold, r.new_hold) for r in result.held] == [("strat2", "msft-strat2", "msft-strat2")]
    assert result.held == result.held_before
    assert result.fees()[0] == result.fees()[1]
    assert result.latency()[0] == pytest.approx(result.latency()[1])
    assert result.mix_before == result.mix_after


async def test_the_command_prints_the_changes_writes_the_detail_and_refuses_bad_input_clearly(
    start_pipeline: Callable[..., Awaitable[Pipeline]], isolated: Settings, tmp_path: Path
) -> None:
    """`mbx whatif` prints the summary and writes JSON and CSV; a bad field, a bad --since and an
    empty window each end in one clear line, never a traceback; the dashboard's way in
    (``workers.ops.whatif``) reads the same report and the same line."""
    await record_book(start_pipeline, isolated)
    other = tmp_path / "other.yaml"
    other.write_bytes(config_to_json(config(CHANGED)))  # JSON is YAML
    env = {"MBX_DATABASE_URL": isolated.database_url or ""}
    out_json, out_csv = tmp_path / "detail.json", tmp_path / "detail.csv"
    code, out = await mbx(
        "whatif", "--config", str(other), "--since", "1h", "--json", str(out_json), "--csv", str(out_csv), env=env
    )
    assert code == 0, out
    assert "6 recorded intents replayed; 4 decisions change" in out
    assert "would be rejected" in out and "assumptions:" in out
    assert "1 would be held for approval before routing (1 held when recorded)" in out
    written = json.loads(out_json.read_text())
    assert (written["replayed"], written["changed"], written["rejected"]) == (6, 4, 1)
    assert sum(row["changed"] for row in written["detail"]) == 4
    assert sum(m["before"] for m in written["mix"]) == sum(m["after"] for m in written["mix"]) == 6
    assert (written["held"], written["held_before"]) == (1, 1)
    holds = {(row["symbol"], row["strategy_id"]): (row["old_hold"], row["new_hold"]) for row in written["detail"]}
    assert holds["BTC-USD", "strat1"] == (None, "crypto-four-eyes")
    assert holds["MSFT", "strat2"] == ("msft-strat2", None)
    assert "old_hold,new_hold" in out_csv.read_text().splitlines()[0]
    assert len(out_csv.read_text().splitlines()) == len(BOOK) + 1

    code, out = await mbx("whatif", "--config", str(other), "--since", "1h", "--strategy", "strat2", env=env)
    assert code == 0 and "1 recorded intents replayed; 1 decisions change" in out, out
    assert "0 would be held for approval before routing (1 held when recorded)" in out

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"routing": {"weights": {"cost": "lots"}}}))
    code, out = await mbx("whatif", "--config", str(bad), env=env)
    assert code == 2 and "routing.weights.cost" in out and "Traceback" not in out, out
    code, out = await mbx("whatif", "--config", str(other), "--since", "yesterday", env=env)
    assert code == 2 and "--since 'yesterday'" in out and "Traceback" not in out, out
    code, out = await mbx("whatif", "--config", str(other), "--since", "1h", "--strategy", "nobody", env=env)
    assert code == 1 and "nothing to replay" in out and "Traceback" not in out, out

    # The dashboard's way in (workers.ops.whatif): the same command, its report, its error line.
    report = await whatif_report(config(CHANGED), isolated.database_url or "", since="1h")
    assert (report.replayed, report.changed, report.rejected, report.held, report.held_before) == (6, 4, 1, 1, 1)
    with pytest.raises(OperatorError, match=r"^no routing decision is recorded since .* for strategy 'nobody'"):
        await whatif_report(config(CHANGED), isolated.database_url or "", since="1h", strategy="nobody")


def test_defaults_are_a_valid_config() -> None:
    """The builders' configs parse (a typo in them would fail every test above for the wrong reason)."""
    assert isinstance(parse_config(BASE), MbxConfig) and isinstance(parse_config(CHANGED), MbxConfig)
