"""Every tab of the dashboard, with orders flowing through a real stack (AppTest)."""

from __future__ import annotations

import pytest

from contracts import BrokerName
from tests.conftest import eventually, fetch_all
from tests.dashboard.conftest import Flow, charts, open_app, run, table, texts
from workers.domain.config import MbxConfig
from workers.ops.config import read_live_config

pytestmark = pytest.mark.integration

TABS = ["Broker status", "Portfolio", "Routing", "Configuration"]


async def test_broker_status_shows_every_broker_and_a_down_one_stands_out(flow: Flow) -> None:
    at = await open_app()
    assert [t.label for t in at.tabs if t.label in TABS] == TABS
    brokers = table(at, "broker", "state", "latency ms", "error rate", "rate headroom", "last heartbeat s")
    assert sorted(brokers["broker"]) == sorted(str(b) for b in BrokerName)
    assert set(brokers["state"]) == {"up"}
    assert {m.label: m.value for m in at.metric}["brokers up"] == "5 of 5"
    consumers = table(at, "stream", "consumer", "pending")
    assert {"router", "executor-alpaca", "aggregator-routes"} <= set(consumers["consumer"])
    assert not at.error

    flow.pipeline.venues[BrokerName.IBKR].switch_faults({"outage": True})

    async def ibkr_down() -> bool:
        page = await run(at)  # what the page's 3 s refresh does
        states = dict(
            zip(table(page, "broker", "state")["broker"], table(page, "broker", "state")["state"], strict=True)
        )
        return states["ibkr"] == "down"

    await eventually(ibkr_down, timeout=20, interval=0.5)
    [alert] = texts(at, "error")
    assert "ibkr is down" in alert and "simulated outage" in alert
    why = table(at, "broker", "why down").set_index("broker")["why down"]
    assert "simulated outage" in why["ibkr"] and why["alpaca"] == ""
    assert {m.label: m.value for m in at.metric}["brokers up"] == "4 of 5"

    flow.pipeline.venues[BrokerName.SCHWAB].switch_faults({"warning": "schwab: the login expires in 5h 0m"})

    async def warned() -> bool:
        return any("the login expires in 5h 0m" in w for w in texts(await run(at), "warning"))

    await eventually(warned, timeout=20, interval=0.5)
    assert {m.label: m.value for m in at.metric}["brokers up"] == "4 of 5"  # a warning is not down


async def test_portfolio_shows_positions_by_symbol_and_broker_allocation_and_exposure(flow: Flow) -> None:
    async def filled_positions() -> bool:
        rows = await fetch_all(flow.db, "SELECT count(*) AS n FROM positions")
        return bool(rows[0]["n"] >= 4)

    await eventually(filled_positions, timeout=20)
    at = await open_app()
    positions = table(at, "symbol", "quantity", "avg cost", "mark", "value", "unrealized", "realized").set_index(
        "symbol"
    )
    assert positions.loc["AAPL", "quantity"] == 10
    assert positions.loc["NVDA", "quantity"] == -3
    assert positions.loc["MSFT", "quantity"] == 0.5
    assert "alpaca 10" in positions.loc["AAPL", "brokers"]
    by_broker = table(at, "broker", "symbol", "quantity", "value")
    assert {("alpaca", "AAPL"), ("coinbase", "BTC-USD"), ("robinhood", "MSFT")} <= set(
        zip(by_broker["broker"], by_broker["symbol"], strict=True)
    )
    metrics = {m.label: m.value for m in at.metric}
    assert {"portfolio value", "cash", "unrealized P&L", "realized P&L"} <= set(metrics)

    [allocation] = [c for c in charts(at) if "layer" in c.spec]
    marks = [layer["mark"]["type"] for layer in allocation.spec["layer"]]
    assert marks == ["bar", "rule"]
    rows = allocation.rows
    targets = {r["broker"]: r["percent"] for r in rows if r.get("measure") == "target"}
    assert targets == {str(b): 100.0 for b in BrokerName}  # allocation_percent 1 each by default
    limit = [r["percent"] for r in rows if set(r) == {"percent"}]
    assert limit == [float(MbxConfig().risk.max_broker_allocation * 100)]

    exposure = table(at, "broker", "held value", "in flight")
    assert at.selectbox(key="exposure_symbol").value == "AAPL"
    assert list(exposure["broker"]) == ["alpaca"] and exposure["held value"][0] > 0


async def test_routing_lists_decisions_explains_an_intent_charts_quality_and_previews(flow: Flow) -> None:
    at = await open_app()
    routes = table(at, "decided_at", "intent_id", "symbol", "broker_name", "rule", "score")
    assert set(flow.finals) <= set(routes["intent_id"])
    assert {"default:equity", "default:crypto", "default:option", "default:fractional"} <= set(routes["rule"])

    at.selectbox(key="route_broker").select("coinbase")
    await run(at)
    only = table(at, "intent_id", "broker_name")
    assert set(only["broker_name"]) == {"coinbase"} and len(only) == 1
    at.selectbox(key="route_broker").select("any")
    at.text_input(key="route_symbol").input("aapl")
    await run(at)
    assert set(table(at, "intent_id", "symbol")["symbol"]) == {"AAPL"}

    [aapl] = table(at, "intent_id", "symbol")["intent_id"]
    at.selectbox(key="route_intent").select(aapl)
    await run(at)
    candidates = table(at, "broker", "total", "cost", "speed", "fill", "outcome").set_index("broker")
    assert candidates.loc["alpaca", "outcome"] == "chosen"
    losers = candidates.drop(index="alpaca")["outcome"]
    assert losers.str.contains("default:equity decided|left out", regex=True).all()
    assert "coinbase" in candidates.index and "unsupported_asset" in candidates.loc["coinbase", "outcome"]
    assert any("routed to **alpaca** by `default:equity`" in m for m in texts(at, "markdown"))
    fills = table(at, "fill_id", "price", "fee")
    assert fills["quantity"].sum() == 10

    quality = {c.spec["title"]: c for c in charts(at) if "title" in c.spec}
    assert {"fill rate", "latency p50 (ms)", "latency p99 (ms)", "fees (USD)"} <= set(quality)
    assert quality["fill rate"].spec["encoding"]["y"]["field"] == "fill_rate"
    points = quality["fill rate"].rows
    assert {"alpaca", "coinbase", "schwab", "robinhood"} <= {p["broker_name"] for p in points}
    assert all(p["fill_rate"] == 1.0 for p in points)

    form_symbol = next(w for w in at.text_input if w.label == "symbol" and w.value == "AAPL")
    form_symbol.input("ETH-USD")
    next(w for w in at.selectbox if w.label == "asset class").select("crypto")
    next(w for w in at.text_input if w.label == "quantity").input("0.5")
    next(b for b in at.button if b.label == "Preview the route").click()
    await run(at)
    assert any("would go to **coinbase** by `default:crypto`" in s for s in texts(at, "success"))


async def test_a_bad_config_edit_is_refused_naming_the_field_and_a_good_one_is_applied_and_audited(flow: Flow) -> None:
    js = flow.nc.jetstream()
    before = await read_live_config(js, flow.settings.subjects)
    at = await open_app()
    at.text_input(key="operator").input("alice")
    at.number_input(key="w_cost").set_value(0.9)
    next(b for b in at.button if b.label == "Apply").click()
    await run(at)
    [refusal] = texts(at, "error")
    assert refusal.startswith("not applied:") and "routing.weights" in refusal and "must be 1" in refusal
    assert (await read_live_config(js, flow.settings.subjects)).revision == before.revision
    assert await fetch_all(flow.db, "SELECT * FROM config_changes") == []

    at.number_input(key="w_cost").set_value(0.4)
    at.multiselect(key="kill_brokers").set_value(["schwab"])
    at.text_input(key="reason").input("schwab maintenance")
    next(b for b in at.button if b.label == "Apply").click()
    await run(at)
    [applied] = texts(at, "success")
    assert "applied: live config revision" in applied and 'risk.kill_switches.brokers=["schwab"]' in applied
    after = await read_live_config(js, flow.settings.subjects)
    assert after.revision > before.revision and after.config is not None
    assert after.config["risk"]["kill_switches"]["brokers"] == ["schwab"]
    [change] = await fetch_all(flow.db, "SELECT * FROM config_changes")
    assert change["changed_by"] == "alice (dashboard)" and change["revision"] == after.revision
    assert "schwab maintenance" in change["summary"]

    await run(at)
    history = table(at, "changed_at", "revision", "changed_by", "summary")
    assert list(history["changed_by"]) == ["alice (dashboard)"]

    at.text_input(key="operator").input("")
    at.multiselect(key="kill_brokers").set_value([])
    next(b for b in at.button if b.label == "Apply").click()
    await run(at)
    assert any("say who is making the change" in e for e in texts(at, "error"))
    assert len(await fetch_all(flow.db, "SELECT * FROM config_changes")) == 1


async def test_dead_letters_are_listed_and_replayed_after_a_dry_run(flow: Flow) -> None:
    subject = f"{flow.settings.subject_prefix}.orders.intent.dash"
    await flow.nc.jetstream().publish(subject, b'{"not": "an intent"}', headers={"Nats-Msg-Id": "dash-poison-1"})
    at = await open_app()

    async def listed() -> bool:
        page = await run(at)
        return bool(len(table(page, "seq", "stage", "subject", "error")) == 1)

    await eventually(listed, timeout=20, interval=0.5)
    letters = table(at, "seq", "stage", "subject", "error")
    assert letters["stage"][0] == "router" and letters["subject"][0] == subject
    seq = int(letters["seq"][0])

    at.multiselect(key="dlq_chosen").set_value([seq])
    await run(at)
    assert at.button(key="dlq_replay").disabled  # no replay before a dry run of this selection
    at.button(key="dlq_dry").click()
    await run(at)
    assert any("dry run: 1 dead letters would be replayed" in i for i in texts(at, "info"))
    assert await fetch_all(flow.db, "SELECT * FROM dlq_replays") == []
    assert not at.button(key="dlq_replay").disabled
    at.text_input(key="dlq_operator").input("bob")
    at.button(key="dlq_replay").click()
    await run(at)
    assert "replayed 1 of 1 dead letters" in texts(at, "success")[0]
    [replay] = await fetch_all(flow.db, "SELECT * FROM dlq_replays")
    assert replay["replayed_by"] == "bob (dashboard)" and replay["original_subject"] == subject
    replays = table(at, "replayed_at", "letter_id", "replayed_by")
    assert list(replays["replayed_by"]) == ["bob (dashboard)"]


async def test_what_did_not_answer_is_said_on_the_page_not_raised(flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MBX_SUBJECT_PREFIX", "nobody")  # no aggregator or router answers there
    at = await open_app()
    warnings = texts(at, "warning")
    assert any("portfolio (the aggregator): nobody answered on nobody.api.portfolio.unified" in w for w in warnings)
    assert any("no broker heartbeat yet" in i for i in texts(at, "info"))
