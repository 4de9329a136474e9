"""A secured nats-server from `mbx security init`: one user per role, TLS from the generated CA.

- Every worker runs as its own role (router, each executor, aggregator) with only its grants,
  and an intent a strategy publishes as itself fills: the roles have what they use.
- A strategy cannot publish another strategy's intent (the client raises ``PublishDenied`` with
  the server's words, at once rather than after a minute of retries), read the dead letters or
  any stream through the JetStream API, change the live config, or read another user's replies.
- Wrong credentials and a missing CA are clear errors; password files are private.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient

from contracts import BrokerName, CancelReject, CancelRequest, OrderIntent, OrderStatus, Subjects
from contracts.client import MbxClient, PublishDenied, SubscribeDenied
from tests.builders import CRYPTO, FRACTIONAL, OPTION, intent_payload
from tests.conftest import eventually, fetch_all, new_database, simulated_venue, unthrottled
from tests.servers import Servers
from workers.devstack.nats import EmbeddedNats
from workers.domain.approvals import hold_key
from workers.domain.config import MbxConfig, parse_config
from workers.entry import build_executor_worker, build_worker
from workers.ops import approvals, security
from workers.platform.access import connect_options, inbox_prefix
from workers.platform.bus import ensure_streams, jetstream
from workers.platform.db.engine import make_engine
from workers.platform.live_config import write_live_config
from workers.platform.runtime import Worker
from workers.platform.settings import Settings

pytestmark = pytest.mark.integration

STRATEGIES = ["s1", "s2"]
DOCS = Path(__file__).parents[2] / "docs" / "operations.md"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedNats, security.SecuritySetup]]:
    base = tmp_path_factory.mktemp("secure")
    setup = security.init(base / "security", Subjects(), STRATEGIES, list(BrokerName))
    server = EmbeddedNats(base / "nats", extra_config=setup.server_config.read_text())
    server.start()
    yield server, setup
    server.stop()


def as_role(setup: security.SecuritySetup, server: EmbeddedNats, user: str, **more: Any) -> Settings:
    return Settings(
        nats_url=server.url,
        nats_user=user,
        nats_password_file=setup.users[user],
        nats_ca_file=setup.ca_file,
        **more,
    )


@pytest.fixture
async def operator(secured: tuple[EmbeddedNats, security.SecuritySetup]) -> AsyncIterator[NatsClient]:
    server, setup = secured
    nc = await nats.connect(server.url, **connect_options(as_role(setup, server, "operator")))
    yield nc
    await nc.close()


async def strategy_client(secured: tuple[EmbeddedNats, security.SecuritySetup], strategy: str) -> Any:
    server, setup = secured
    return MbxClient.connect(server.url, **connect_options(as_role(setup, server, f"strategy-{strategy}")))


async def router_and_alpaca(
    secured: tuple[EmbeddedNats, security.SecuritySetup], operator: NatsClient, config: MbxConfig
) -> tuple[list[Worker], Any]:
    """``config`` live, and the router and Alpaca's executor started as their roles."""
    server, setup = secured
    await write_live_config(jetstream(operator), Subjects(), config)
    venue = simulated_venue(BrokerName.ALPACA, config)
    workers: list[Worker] = [
        build_worker("router", as_role(setup, server, "router"), config),
        build_executor_worker(as_role(setup, server, "executor-alpaca"), BrokerName.ALPACA, venue, config),
    ]
    for worker in workers:
        await worker.start()
    return workers, venue


def test_every_password_file_is_private_and_the_config_is_valid(
    secured: tuple[EmbeddedNats, security.SecuritySetup],
) -> None:
    _, setup = secured
    expected = {"router", "aggregator", "parents", "operator", *(f"executor-{b}" for b in BrokerName)}
    expected |= {f"strategy-{s}" for s in STRATEGIES}
    assert set(setup.users) == expected
    for path in [*setup.users.values(), setup.server_config, setup.key_file]:
        assert path is not None and stat.S_IMODE(path.stat().st_mode) == 0o600, path
    text = setup.server_config.read_text()
    for password_file in setup.users.values():
        assert password_file.read_text() in text  # each user's own password
    assert len({p.read_text() for p in setup.users.values()}) == len(setup.users)


async def test_every_worker_runs_as_its_role_and_an_intent_fills(
    secured: tuple[EmbeddedNats, security.SecuritySetup], operator: NatsClient, servers: Servers
) -> None:
    server, setup = secured
    database = await new_database(servers, f"sec{uuid.uuid4().hex[:8]}")
    config = unthrottled(MbxConfig())
    await write_live_config(jetstream(operator), Subjects(), config)
    workers: list[Worker] = [
        build_worker("router", as_role(setup, server, "router"), config),
        *(
            build_executor_worker(as_role(setup, server, f"executor-{b}"), b, simulated_venue(b, config), config)
            for b in config.enabled_brokers()
        ),
        build_worker("aggregator", as_role(setup, server, "aggregator", database_url=database), config),
    ]
    for worker in workers:
        await worker.start()
    db = make_engine(database, pool_size=1)
    try:
        # Every broker's path: equities (alpaca, and ibkr by preference), crypto, options at
        # schwab (no client order ids: shape locks and attributions), fractional shares.
        kinds: list[dict[str, Any]] = [{}, {"broker": "ibkr"}, CRYPTO, OPTION, FRACTIONAL]
        intents = [OrderIntent.model_validate(intent_payload(strategy_id="s1", **k)) for k in kinds]
        resting = OrderIntent.model_validate(
            intent_payload(strategy_id="s1", order_type="limit", limit_price="0.5", quantity="3")
        )
        async with await strategy_client(secured, "s1") as client:
            for intent in intents:
                tracker = await client.submit_and_wait(intent, timeout=30)
                assert tracker.terminal is not None and str(tracker.terminal.status) == "filled", intent
            with pytest.raises(SubscribeDenied, match="pass its strategy_id"):
                await client.track(resting.intent_id)  # every strategy's results: not for s1
            tracker = await client.track(resting.intent_id, "s1")
            await client.submit(resting)

            async def accepted() -> bool:
                return any(str(r.status) == "accepted" for r in tracker.reports)

            await eventually(accepted, timeout=30)
            # Another strategy names s1's intent on its own cancel subject: refused, order unchanged.
            assert await cancel_as_another(secured, "s2", resting.intent_id) == "not_your_order"
            assert not tracker.terminal
            await client.cancel(resting.intent_id, "s1", reason="security test")  # the router forwards it
            assert str((await tracker.wait(30)).status) == "cancelled"
            await tracker.close()
            assert client.refusals == [
                'nats: permissions violation for subscription to "mbx.routes.>"'
            ]  # the one above
        # An operator asks the aggregator for a fresh portfolio: it asks every executor in turn.
        reply = await operator.request(Subjects().api("portfolio.sync"), b"", timeout=15)
        assert reply.data
        ids = [i.intent_id for i in [*intents, resting]]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rows = await fetch_all(db, "SELECT status FROM orders WHERE intent_id = ANY(:ids)", ids=ids)
            if sorted(r["status"] for r in rows) == ["cancelled"] + ["filled"] * len(intents):
                break
            await asyncio.sleep(0.2)
        assert sorted(r["status"] for r in rows) == ["cancelled"] + ["filled"] * len(intents)
        assert {w.name: w.refusals for w in workers if w.refusals} == {}  # nothing they use was refused
    finally:
        await asyncio.gather(*(w.stop() for w in workers))
        await db.dispose()


async def cancel_as_another(
    secured: tuple[EmbeddedNats, security.SecuritySetup], strategy: str, intent_id: str, claimed: str | None = None
) -> str:
    """``strategy`` asks to cancel ``intent_id`` on its own cancel subject, its body naming
    ``claimed`` (itself by default); the reason code of the answer it reads on its own results."""
    server, setup = secured
    nc = await nats.connect(server.url, **connect_options(as_role(setup, server, f"strategy-{strategy}")))
    try:
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def got(msg: Any) -> None:
            if not answer.done():
                answer.set_result(msg.data)

        await nc.subscribe(Subjects().cancel_reject("*", strategy), cb=got)
        request = CancelRequest(
            message_id=f"cancel-{uuid.uuid4().hex}",
            correlation_id=intent_id,
            intent_id=intent_id,
            strategy_id=claimed or strategy,
        )
        await nc.jetstream().publish(
            Subjects().cancel(strategy), request.model_dump_json().encode(), headers={"Nats-Msg-Id": request.message_id}
        )
        return CancelReject.model_validate_json(await asyncio.wait_for(answer, 20)).reason_code
    finally:
        await nc.close()


async def test_beta_cannot_cancel_alphas_order_by_any_subject_or_body_under_secure(
    secured: tuple[EmbeddedNats, security.SecuritySetup], operator: NatsClient
) -> None:
    """With the router and executor as their roles, s2 (beta) naming s1's (alpha's) working order
    is refused on its own results whatever its body says, NATS refuses it s1's cancel subject,
    and the order keeps working until s1 cancels it."""
    config = unthrottled(parse_config({"brokers": {"alpaca": {}}}))
    workers, venue = await router_and_alpaca(secured, operator, config)
    resting = OrderIntent.model_validate(
        intent_payload(strategy_id="s1", order_type="limit", limit_price="0.5", quantity="3")
    )
    try:
        async with await strategy_client(secured, "s1") as alpha, await strategy_client(secured, "s2") as beta:
            tracker = await alpha.track(resting.intent_id, "s1")
            await alpha.submit(resting)

            async def accepted() -> bool:
                return any(str(r.status) == "accepted" for r in tracker.reports)

            await eventually(accepted, timeout=30)
            assert await cancel_as_another(secured, "s2", resting.intent_id, claimed="s1") == "wrong_strategy"
            assert await cancel_as_another(secured, "s2", resting.intent_id) == "not_your_order"
            with pytest.raises(PublishDenied, match=r"mbx\.orders\.cancel\.s1"):
                await beta.cancel(resting.intent_id, "s1")
            [order] = [o for o in await venue.book.all() if o.client_order_id == resting.intent_id]
            assert order.status is OrderStatus.ACCEPTED and not tracker.terminal
            await alpha.cancel(resting.intent_id, "s1")
            assert str((await tracker.wait(30)).status) == "cancelled"
            await tracker.close()
        assert {w.name: w.refusals for w in workers if w.refusals} == {}
    finally:
        await asyncio.gather(*(w.stop() for w in workers))


async def test_a_strategy_using_the_documented_reply_inbox_gets_its_acks(
    secured: tuple[EmbeddedNats, security.SecuritySetup], operator: NatsClient
) -> None:
    """A plain NATS client of strategy s1 that takes its reply inbox from docs/operations.md
    gets JetStream's acks for what it publishes."""
    server, setup = secured
    documented = re.search(r"`(_INBOX_strategy[\w-]*)\.>`", DOCS.read_text())
    assert documented is not None, "docs/operations.md names no strategy inbox"
    inbox = documented.group(1).replace("alpha", "s1")
    await ensure_streams(operator.jetstream(), Subjects())
    options = connect_options(as_role(setup, server, "strategy-s1")) | {"inbox_prefix": inbox}
    nc = await nats.connect(server.url, **options)
    try:
        ghost = f"ghost-{uuid.uuid4().hex}"
        request = CancelRequest(message_id=f"cancel-{ghost}", correlation_id=ghost, intent_id=ghost, strategy_id="s1")
        ack = await nc.jetstream(timeout=5).publish(
            Subjects().cancel("s1"), request.model_dump_json().encode(), headers={"Nats-Msg-Id": request.message_id}
        )
        assert ack.stream == "ORDERS" and ack.seq > 0
    finally:
        await nc.close()


async def test_a_strategy_may_not_publish_another_strategys_intent(
    secured: tuple[EmbeddedNats, security.SecuritySetup],
) -> None:
    async with await strategy_client(secured, "s1") as client:
        started = time.monotonic()
        with pytest.raises(PublishDenied, match=r"NATS refused this user publishing to mbx\.orders\.intent\.s2"):
            await client.submit(OrderIntent.model_validate(intent_payload(strategy_id="s2")))
        assert time.monotonic() - started < 15  # one publish timeout, not the minute of retries
        assert any("permissions violation" in r.lower() for r in client.refusals)


async def test_a_strategy_reads_only_its_own_results_and_no_dead_letters_streams_replies_or_config(
    secured: tuple[EmbeddedNats, security.SecuritySetup],
) -> None:
    server, setup = secured
    refusals: list[str] = []

    async def on_error(exc: Exception) -> None:
        refusals.append(str(exc))

    options = connect_options(as_role(setup, server, "strategy-s1"))
    nc = await nats.connect(server.url, error_cb=on_error, **options)
    try:
        js = nc.jetstream(timeout=2)
        seen: list[bytes] = []

        async def got(msg: Any) -> None:
            seen.append(msg.data)

        await nc.subscribe("mbx.dlq.>", cb=got)
        await nc.subscribe(f"{inbox_prefix('strategy-s2')}.>", cb=got)
        for subject in (*Subjects().results_of("s2"), "mbx.fills.>", "mbx.exec.>"):
            await nc.subscribe(subject, cb=got)  # another strategy's results, or everyone's
        with pytest.raises(nats.errors.TimeoutError):
            await js.stream_info("DLQ")
        with pytest.raises(nats.errors.TimeoutError):
            kv = await js.key_value("mbx_config")  # the bucket's info is refused: no handle at all
            await kv.put("trading", b"{}")
        with pytest.raises(nats.errors.TimeoutError):
            await js.publish("$KV.mbx_config.trading", b"{}")
        await nc.flush()
        await asyncio.sleep(0.3)
        text = " ".join(refusals).lower()
        assert 'permissions violation for subscription to "mbx.dlq.>"' in text
        assert f'permissions violation for subscription to "{inbox_prefix("strategy-s2").lower()}.>"' in text
        assert '"$js.api.stream.info.dlq"' in text
        assert '"$kv.mbx_config.trading"' in text
        for subject in (*Subjects().results_of("s2"), "mbx.fills.>", "mbx.exec.>"):
            assert f'permissions violation for subscription to "{subject}"' in text, subject
        assert seen == []
    finally:
        await nc.close()


async def test_only_an_operator_may_approve_a_held_order_its_strategy_cannot_under_secure(
    secured: tuple[EmbeddedNats, security.SecuritySetup], operator: NatsClient
) -> None:
    """s1's large order is held (told on s1's own results); s1 cannot approve it, nor read or
    write the approvals bucket; the operator's approval routes it and it fills."""
    server, setup = secured
    config = unthrottled(
        parse_config(
            {"brokers": {"alpaca": {}}, "approvals": {"rules": [{"name": "large", "match": {"min_notional": 5000}}]}}
        )
    )
    workers, _ = await router_and_alpaca(secured, operator, config)
    intent = OrderIntent.model_validate(intent_payload(strategy_id="s1", quantity="100"))
    refusals: list[str] = []

    async def on_error(exc: Exception) -> None:
        refusals.append(str(exc))

    s1 = await nats.connect(server.url, error_cb=on_error, **connect_options(as_role(setup, server, "strategy-s1")))
    try:
        held: list[bytes] = []

        async def got(msg: Any) -> None:
            held.append(msg.data)

        await s1.subscribe(Subjects().pending_approval("s1"), cb=got)
        async with await strategy_client(secured, "s1") as client:
            tracker = await client.track(intent.intent_id, "s1")
            await client.submit(intent)
            await eventually(lambda: _held(operator, intent.intent_id), timeout=15)
            await eventually(lambda: _true(bool(held)), timeout=10)
            with pytest.raises(nats.errors.TimeoutError):
                await approvals.approve(s1.jetstream(timeout=2), Subjects(), intent.intent_id, "s1-desk", "mine")
            with pytest.raises(nats.errors.TimeoutError):
                await s1.jetstream(timeout=2).publish(f"$KV.mbx_approvals.{hold_key(intent.intent_id)}", b"{}")
            await s1.flush()
            await asyncio.sleep(0.3)
            text = " ".join(refusals).lower()
            assert '"$js.api.stream.info.kv_mbx_approvals"' in text and '"$kv.mbx_approvals.' in text
            hold = await _held(operator, intent.intent_id)
            assert hold is not None and str(hold.state) == "pending" and not tracker.terminal
            await approvals.approve(jetstream(operator), Subjects(), intent.intent_id, "carol", "four eyes")
            assert str((await tracker.wait(30)).status) == "filled"
            await tracker.close()
        assert {w.name: w.refusals for w in workers if w.refusals} == {}
    finally:
        await s1.close()
        await asyncio.gather(*(w.stop() for w in workers))
        await write_live_config(jetstream(operator), Subjects(), unthrottled(MbxConfig()))


async def _held(operator: NatsClient, intent_id: str) -> Any:
    return next(
        (
            h
            for h in await approvals.held(jetstream(operator), Subjects(), every=True)
            if h.intent.intent_id == intent_id
        ),
        None,
    )


async def _true(value: bool) -> bool:
    return value


async def test_wrong_credentials_and_a_missing_ca_are_clear_errors(
    secured: tuple[EmbeddedNats, security.SecuritySetup], tmp_path: Path
) -> None:
    server, setup = secured
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password")
    wrong.chmod(0o600)
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    settings = as_role(setup, server, "strategy-s1").model_copy(update={"nats_password_file": wrong})
    with pytest.raises(Exception):  # noqa: B017  (nats-py raises its own family; the callback says why)
        await nats.connect(
            server.url, error_cb=on_error, allow_reconnect=False, connect_timeout=3, **connect_options(settings)
        )
    assert any("authorization violation" in e.lower() for e in errors), errors

    no_ca = as_role(setup, server, "strategy-s1").model_copy(update={"nats_ca_file": None})
    options = connect_options(no_ca) | {"tls": ssl.create_default_context()}
    errors.clear()
    with pytest.raises(Exception):  # noqa: B017
        await nats.connect(server.url, error_cb=on_error, allow_reconnect=False, connect_timeout=3, **options)
    assert any("certificate verify failed" in e.lower() for e in errors), errors

    loose = tmp_path / "loose.password"
    loose.write_text("x")
    loose.chmod(0o644)
    from workers.domain.config import ConfigError

    with pytest.raises(ConfigError, match="can be read by others"):
        connect_options(settings.model_copy(update={"nats_password_file": loose}))
