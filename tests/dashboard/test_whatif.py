"""The configuration tab's "preview this change on last week's orders" (AppTest, real stack): the
edit replayed by `mbx whatif` and shown without applying it, figure for figure as the command's
own --json report for the same config, orders held for approval included."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboard.configuration import PREVIEW
from tests.conftest import fetch_all
from tests.dashboard.conftest import Flow, open_app, run, table, texts
from tests.integration.test_cli import mbx
from workers.domain.config import ApprovalsConfig, config_to_json, parse_config
from workers.ops.config import changed, read_live_config
from workers.platform.bus import jetstream
from workers.platform.live_config import write_live_config

pytestmark = pytest.mark.integration

RULES = [
    {"name": "aapl-ibkr", "match": {"symbol": ["AAPL"]}, "prefer": ["ibkr"]},
    {"name": "options-not-schwab", "match": {"asset_class": ["option"]}, "exclude": ["schwab"]},
]
APPROVALS: dict[str, Any] = {"rules": [{"name": "aapl-four-eyes", "match": {"symbol": ["AAPL"]}, "approvers": 2}]}
CHANGES: dict[str, Any] = {
    "routing.weights": {"cost": 1.0, "speed": 0.0, "fill": 0.0},
    "risk.kill_switches.symbols": ["NVDA"],
    "routing.rules": RULES,
}


async def command_report(flow: Flow, tmp_path: Path) -> dict[str, Any]:
    """`mbx whatif --since 7d --json` for the live config with CHANGES, as an operator runs it."""
    live = await read_live_config(flow.nc.jetstream(), flow.settings.subjects)
    assert live.config is not None
    candidate = tmp_path / "candidate.json"
    candidate.write_bytes(config_to_json(changed(CHANGES)(live.config)))
    out = tmp_path / "whatif.json"
    env = {"MBX_DATABASE_URL": flow.settings.database_url or ""}
    code, printed = await mbx("whatif", "--config", str(candidate), "--since", "7d", "--json", str(out), env=env)
    assert code == 0, printed
    written: dict[str, Any] = json.loads(out.read_text())
    return written


def by_key(rows: Any, key: str) -> dict[str, tuple[int, int]]:
    return {row[key]: (int(row["before"]), int(row["after"])) for row in rows}


async def test_a_previewed_edit_shows_the_whatif_figures_of_the_command_and_applies_nothing(
    flow: Flow, tmp_path: Path
) -> None:
    """Preview replays the edited config over the week's orders and shows what `mbx whatif --json`
    reports for it (changed decisions, mix, fees, latency, rejections, rule effect, orders held
    for approval by the live config's rules); nothing is applied, and an invalid edit is named
    instead of previewed."""
    js = flow.nc.jetstream()
    live = await read_live_config(js, flow.settings.subjects)
    with_approvals = parse_config(live.config or {}).model_copy(update={"approvals": ApprovalsConfig(**APPROVALS)})
    await write_live_config(jetstream(flow.nc), flow.settings.subjects, with_approvals)
    before = await read_live_config(js, flow.settings.subjects)
    assert before.config is not None and before.config["approvals"]["rules"][0]["name"] == "aapl-four-eyes"
    at = await open_app()
    at.number_input(key="w_cost").set_value(1.0)
    at.number_input(key="w_speed").set_value(0.0)
    at.number_input(key="w_fill").set_value(0.0)
    at.text_input(key="kill_symbols").input("NVDA")
    at.text_area(key="rules").input(yaml.safe_dump(RULES))
    next(b for b in at.button if b.label == PREVIEW).click()
    await run(at)
    assert not at.error, texts(at, "error")

    expected = await command_report(flow, tmp_path)
    assert expected["replayed"] == len(flow.finals)
    assert (expected["changed"], expected["rejected"]) == (3, 1)  # AAPL to ibkr, the option off schwab, NVDA
    metrics = {m.label: m for m in at.metric}
    assert metrics["decisions that change"].value == str(expected["changed"])
    assert metrics["would be rejected"].value == str(expected["rejected"])
    fees_before, fees_after = (Decimal(expected["fees_usd"][k]) for k in ("before", "after"))
    assert fees_after != fees_before  # cost alone decides: the change is shown
    assert metrics["estimated fees (USD)"].value == f"{fees_after:.4f}"
    assert metrics["estimated fees (USD)"].delta == f"{fees_after - fees_before:+.4f}"
    latency = expected["latency_ms"]
    latency_change = latency["after"] - latency["before"]
    assert metrics["mean expected latency (ms)"].value == f"{latency['after']:.1f}"
    # No change is shown where it rounds to nothing (the test stack's brokers answer at once).
    assert metrics["mean expected latency (ms)"].delta == (f"{latency_change:+.1f}" if round(latency_change, 1) else "")
    before_line = f"before: fees {fees_before:.4f} USD, latency {latency['before']:.1f} ms"
    assert any(before_line in caption for caption in texts(at, "caption"))

    mix = table(at, "broker", "before", "after").to_dict("records")
    assert by_key(mix, "broker") == by_key(expected["mix"], "broker")
    assert by_key(mix, "broker")["rejected"] == (0, 1)
    rules = table(at, "rule", "before", "after").to_dict("records")
    assert by_key(rules, "rule") == by_key(expected["rule_effect"], "rule")
    assert by_key(rules, "rule")["rule:aapl-ibkr"] == (0, 1)
    shown = table(at, "intent_id", "symbol", "before", "after")
    wanted = [row for row in expected["detail"] if row["changed"]]
    assert sorted(shown["intent_id"]) == sorted(row["intent_id"] for row in wanted)
    after = dict(zip(shown["symbol"], shown["after"], strict=True))
    assert after["AAPL"] == "ibkr (rule:aapl-ibkr)" and after["NVDA"] == "rejected:kill_switch"
    [rejected] = table(at, "intent_id", "new_rule", "new_reason").to_dict("records")
    assert rejected["symbol"] == "NVDA" and "NVDA" in rejected["new_reason"]
    assert any("Preview, not applied" in m for m in texts(at, "markdown"))
    assert (expected["held"], expected["held_before"]) == (1, 0)  # the live config's approval rule holds AAPL
    assert metrics["held for approval"].value == str(expected["held"])
    assert metrics["held for approval"].delta == "1"  # against none held when recorded
    held = table(at, "intent_id", "new_hold", "old_hold").to_dict("records")
    wanted_held = [row for row in expected["detail"] if row["new_hold"] is not None]
    assert [(h["intent_id"], h["new_hold"]) for h in held] == [(w["intent_id"], w["new_hold"]) for w in wanted_held]
    assert [h["symbol"] for h in held] == ["AAPL"]
    holds = table(at, "approval rule", "held when recorded", "would hold").to_dict("records")
    assert holds == [{"approval rule": "aapl-four-eyes", "held when recorded": 0, "would hold": 1}]

    # Nothing was applied or recorded; the preview stays while the form holds the same edit.
    assert (await read_live_config(js, flow.settings.subjects)).revision == before.revision
    assert await fetch_all(flow.db, "SELECT * FROM config_changes") == []
    await run(at)
    assert {m.label: m.value for m in at.metric}["decisions that change"] == str(expected["changed"])

    at.number_input(key="w_cost").set_value(0.9)  # cost + speed + fill is no longer 1
    next(b for b in at.button if b.label == PREVIEW).click()
    await run(at)
    [refusal] = texts(at, "error")
    assert refusal.startswith("no preview:") and "routing.weights" in refusal
    assert "decisions that change" not in {m.label for m in at.metric}
