"""`mbx config`: show, validate and set the live trading config through the real CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient

from contracts import BrokerName, RoutePreview
from tests.builders import make_intent
from tests.conftest import Pipeline, eventually, fetch_all
from tests.integration.test_cli import ALPACA_KEYS, UNRUNNABLE_CONFIGS, UNRUNNABLE_IDS, mbx
from workers.domain.config import MbxConfig, parse_config
from workers.domain.keys import CONFIG_KEY
from workers.platform.bus import jetstream
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration


async def test_config_show_validate_and_set_with_an_audit_row(
    start_pipeline: Any, isolated: Settings, tmp_path: Path
) -> None:
    await start_pipeline(parse_config({"brokers": {"alpaca": {}, "ibkr": {}}}), own_settings=isolated)
    env = {
        "MBX_NATS_URL": isolated.nats_url or "",
        "MBX_DATABASE_URL": isolated.database_url or "",
        "MBX_SUBJECT_PREFIX": isolated.subject_prefix,
    }
    code, out = await mbx("config", "show", env=env)
    assert code == 0, out
    assert "# live config, revision" in out and "weights" in out and "credentials" not in out

    good = tmp_path / "good.yaml"
    good.write_text("brokers: {alpaca: {}, ibkr: {}}\nrouting:\n  weights: {cost: 0.5, speed: 0.25, fill: 0.25}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("routing:\n  weights: {cost: -1, speed: 1, fill: 1}\n")
    code, out = await mbx("config", "validate", str(good), env=env)
    assert code == 0 and "valid" in out
    code, out = await mbx("config", "validate", str(bad), env=env)
    assert code == 2 and "routing.weights" in out

    nc = await nats.connect(isolated.nats_url or "")
    db = make_engine(isolated.database_url or "", pool_size=1)
    try:
        code, out = await mbx("config", "set", "risk.kill_switches.brokers=[alpaca]", "--reason", "test", env=env)
        assert code == 0 and "applied: live config revision" in out, out

        async def alpaca_killed() -> RoutePreview | None:
            reply = await nc.request(
                f"{isolated.subject_prefix}.api.route.preview", make_intent().model_dump_json().encode(), timeout=5
            )
            preview = RoutePreview.model_validate_json(reply.data)
            excluded = {e.broker: e.reason_code for e in (preview.decision.excluded if preview.decision else ())}
            return preview if excluded.get(BrokerName.ALPACA) == "kill_switch" else None

        preview = await eventually(alpaca_killed, timeout=10)
        assert preview.decision is not None and preview.decision.broker is BrokerName.IBKR
        [change] = await fetch_all(db, "SELECT * FROM config_changes")
        assert change["summary"] == "risk.kill_switches.brokers=[alpaca] (test)"
        assert change["config"]["risk"]["kill_switches"]["brokers"] == ["alpaca"]
        assert f"revision {change['revision']}" in out

        code, out = await mbx("config", "set", "routing.weights.cost=2", env=env)
        assert code == 2 and "routing.weights" in out
        code, out = await mbx("config", "set", "routing.nonsense=1", env=env)
        assert code == 2 and "routing.nonsense" in out
        assert len(await fetch_all(db, "SELECT 1 FROM config_changes")) == 1  # refused: nothing written

        code, out = await mbx("config", "set", "--file", str(good), env=env)
        assert code == 0, out
        code, out = await mbx("config", "show", "--json", env=env)
        assert code == 0 and '"cost": 0.5' in out
        assert len(await fetch_all(db, "SELECT 1 FROM config_changes")) == 2
    finally:
        await nc.close()
        await db.dispose()


@pytest.mark.parametrize(("yaml_text", "key"), UNRUNNABLE_CONFIGS, ids=UNRUNNABLE_IDS)
async def test_config_validate_refuses_every_config_mbx_up_refuses(tmp_path: Path, yaml_text: str, key: str) -> None:
    """`mbx config validate` calls invalid, in the same words, each config `mbx up` refuses to start with."""
    config = tmp_path / "mbx.yaml"
    config.write_text(yaml_text)
    keys = {"ALPACA_API_KEY": "PKTEST0000", "ALPACA_SECRET_KEY": "not-a-real-secret"} if "live" in key else {}
    code, out = await mbx("config", "validate", str(config), env=keys)
    assert code == 2, out
    assert key in " ".join(out.split())


async def test_config_validate_accepts_real_money_with_the_opt_in(tmp_path: Path) -> None:
    """A config trading real money is valid with --live, as `mbx up --live` starts it."""
    config = tmp_path / "mbx.yaml"
    config.write_text("brokers:\n  alpaca:\n    adapter: alpaca\n    paper_trading: false\n" + ALPACA_KEYS)
    env = {"ALPACA_API_KEY": "PKTEST0000", "ALPACA_SECRET_KEY": "not-a-real-secret"}
    code, out = await mbx("config", "validate", str(config), env=env)
    assert code == 2 and "would trade real money" in out, out
    code, out = await mbx("config", "validate", str(config), "--live", env=env)
    assert code == 0 and "valid" in out, out
    assert "PKTEST0000" not in out and "not-a-real-secret" not in out


async def test_concurrent_live_config_changes_are_all_applied(pipeline: Pipeline, nc: NatsClient) -> None:
    """Ten operators add a rule each at the same moment: compare-and-set keeps every one."""
    from workers.platform.live_config import change_live_config

    def adding(name: str) -> Any:
        def change(live: dict[str, Any]) -> MbxConfig:
            live["routing"]["rules"].append({"name": name, "match": {"symbol": [name.upper()]}, "prefer": ["ibkr"]})
            return parse_config(live, "test")

        return change

    names = [f"concurrent-{i}" for i in range(10)]
    await asyncio.gather(*(change_live_config(jetstream(nc), pipeline.settings.subjects, adding(n)) for n in names))
    kv = await nc.jetstream().key_value("mbx_config")
    live = json.loads((await kv.get(CONFIG_KEY)).value or b"{}")
    assert set(names) <= {rule["name"] for rule in live["routing"]["rules"]}


async def test_executors_follow_a_rate_limit_changed_in_the_live_config(pipeline: Pipeline, nc: NatsClient) -> None:
    """`mbx config set brokers.schwab.rate_limit=...` reaches the running executor's budget."""
    from workers.executor.app import ExecutorWorker
    from workers.platform.live_config import change_live_config

    def slower(live: dict[str, Any]) -> MbxConfig:
        live["brokers"]["schwab"]["rate_limit"] = {"requests": 7, "per_seconds": 3}
        return parse_config(live, "test")

    await change_live_config(jetstream(nc), pipeline.settings.subjects, slower)
    [schwab] = [w for w in pipeline.workers if isinstance(w, ExecutorWorker) and w.venue.broker == "schwab"]

    async def followed() -> bool:
        return [(w.requests, w.per_seconds) for w in schwab.budget.limits] == [(7, 3.0)]

    assert await eventually(followed)
