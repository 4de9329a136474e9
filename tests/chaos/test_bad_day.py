"""A broker's bad day costs no order (issue 28): `mbx up` as processes with a real adapter
against its fake broker on loopback, through one scripted bad day of 100+ intents.

The day, on a timeline (``tests/fakes/timeline.py``) of about a minute: market orders throughout;
resting limit orders, some answered ``pending_new``; a 5xx burst before and one after an order is
accepted; replies slower than ``request_timeout_s``; the stream down while resting orders fill
(in part for two); a cancel of those and of untouched ones; the key refused for 20 s; kept-alive
connections the server closed; where the broker has trading days, GTC orders through
``done_for_day`` and filled the next "day"; last, a 429 to a placement with the broker's own
reset semantics (Alpaca: ``X-RateLimit-Reset`` is the end of its 60 s window, here placed at a
window's start, so about a minute away) while 46 more intents arrive. Intents
are published a quarter of a second apart, as a strategy sends them (102 in all).

Checks, all made and reported together: every intent ends as its story says (market orders
filled, at the broker or where they failed over to; resting orders filled or cancelled with
their filled quantity); exactly one final report each; no dead letter; at most one order per
intent at the fake and none for an intent that ended elsewhere; the fills in Postgres are the
fake's; the fake refused no request for exceeding the limit mbx knows (its documented one,
counted by the fake; the scripted 429 apart) nor for coming before a 429's reset; every failover
gives one of the reasons ``rate_limited``, ``broker_down``, ``daily_order_cap``; and no route of
the 429 burst waited for the reset (each ended within ``max_queue_wait_s`` plus 8 s).

Kept short (about 90 s per adapter beside start-up): ``request_timeout_s`` is 1.5 s and slow
replies take 3 s (the issue's "2-10 s past the timeout"). Alpaca's rate window is not
compressed: a 429's reset a minute away is what is tested. Before the burst, one order must
fill at the broker again (else the burst would test nothing there; noted as a problem).
Failovers land at a simulated broker. Run one
adapter alone with ``pytest -m bad_day tests/chaos/test_bad_day.py -k alpaca``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import DeadLetter
from tests.chaos.bad_day import Book, Day, Venue
from tests.chaos.bad_day_venues import VENUES
from tests.chaos.outcome import all_final
from tests.chaos.test_stack_process import log_tails, mbx_up
from tests.conftest import fetch_all
from tests.fakes.timeline import Timeline
from workers.platform.bus import read_stream
from workers.platform.db.engine import make_engine
from workers.platform.settings import Settings

# A session of its own in `make test` (tests/run_split.py: `-m bad_day`, beside the chaos tests
# and the rest; `-m 'not bad_day'` in pyproject.toml keeps it out of the others). About a minute
# per adapter, mostly waiting on the timeline. Alone: `pytest -m bad_day tests/chaos/test_bad_day.py [-k alpaca]`.
pytestmark = [pytest.mark.integration, pytest.mark.bad_day]

REQUEST_TIMEOUT_S = 1.5
MAX_QUEUE_WAIT_S = 2.0
SETTLE_S = 8.0
"""Time for a failover, the next broker's fill and the report to reach Postgres."""
FAILOVER_REASONS = {"rate_limited", "broker_down", "daily_order_cap"}


def write_config(path: Path, broker: str, venue: Venue) -> None:
    path.write_text(
        "brokers:\n"
        f"  {broker}:\n{venue.config}"
        f"    request_timeout_s: {REQUEST_TIMEOUT_S}\n"
        f"  {venue.fallback}:\n"  # simulated: where failovers land
        "    rate_limit: {requests: 100000, per_seconds: 1}\n"
        "    orders_per_day: 1000000000\n"
        "    paper_cash: 1000000000000\n"
        "routing:\n"
        f"  max_queue_wait_s: {MAX_QUEUE_WAIT_S}\n"
        "  rules:\n"
        f"    - {{name: resting-at-{broker}, match: {{order_type: [limit]}}, require: [{broker}]}}\n"
        f"    - {{name: {broker}-first, prefer: [{broker}]}}\n"
    )


@pytest.mark.timeout(420)
@pytest.mark.parametrize("broker", list(VENUES))
async def test_a_bad_day_at_the_broker_loses_doubles_and_dead_letters_nothing(
    broker: str, tmp_path: Path, servers: Any, isolated: Settings
) -> None:
    """Through the scripted bad day, every intent ends as its story says, exactly once, with no
    dead letter, and mbx never provokes a 429 by exceeding the limit it knows."""
    async with VENUES[broker](tmp_path) as venue:
        book = venue.book
        config = tmp_path / "bad-day.yaml"
        write_config(config, broker, venue)
        env_vars = {
            "MBX_NATS_URL": servers.nats_url,
            "MBX_DATABASE_URL": isolated.database_url or "",
            "MBX_SUBJECT_PREFIX": isolated.subject_prefix,
            "MBX_CONFIG_FILE": str(config),
            "MBX_LIVE": "1",
            **venue.env,
        }
        with mbx_up(tmp_path, **env_vars) as (up, _stack, _env):
            nc = await nats.connect(servers.nats_url)
            db = make_engine(isolated.database_url or "", pool_size=1)
            day = Day(nc, isolated, book, db, broker)
            timeline = Timeline(venue.steps(day), venue.lock)
            try:
                await first_order_fills(day, db, broker, tmp_path)
                await timeline.run()
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    if await all_final(db, book.ids):
                        break
                    await asyncio.sleep(0.5)
                if not await all_final(db, book.ids):  # the checks below say which and why
                    print(
                        f"not all intents final: {await unfinished(db, nc, isolated, book)}\n{log_tails(tmp_path, 25)}"
                    )
                await check_the_day(nc, db, isolated, book, broker, venue, timeline, day.notes)
            finally:
                await nc.close()
                await db.dispose()
            up.terminate()
            assert up.wait(30) == 0


async def first_order_fills(day: Day, db: Any, broker: str, home: Path) -> None:
    """The stack is up and routes to ``broker``: a first market order fills there (it is one of
    the day's intents)."""
    [payload] = day.book.market(1, "first")
    await day.publish([payload])
    deadline = time.monotonic() + 60
    while True:
        rows = await fetch_all(
            db, "SELECT broker_name, status FROM orders WHERE intent_id = :i", i=payload["intent_id"]
        )
        if rows and rows[0]["status"] == "filled":
            assert rows[0]["broker_name"] == broker
            return
        assert time.monotonic() < deadline, f"the first order did not fill: {rows}\n{log_tails(home, 25)}"
        await asyncio.sleep(0.2)


async def dead_letters(nc: NatsClient, settings: Settings) -> list[DeadLetter]:
    stored = await read_stream(nc.jetstream(), settings.subjects.stream_name("DLQ"), settings.subjects.dlq("*"))
    return [DeadLetter.model_validate_json(m.data) for m in stored]


async def unfinished(db: Any, nc: NatsClient, settings: Settings, book: Book) -> str:
    rows = await fetch_all(
        db,
        "SELECT intent_id, broker_name, status, filled_quantity, reason FROM orders WHERE intent_id = ANY(:ids) "
        "AND status NOT IN ('filled', 'cancelled', 'rejected', 'failed', 'expired')",
        ids=book.ids,
    )
    stored = {
        r["intent_id"]
        for r in await fetch_all(db, "SELECT intent_id FROM orders WHERE intent_id = ANY(:ids)", ids=book.ids)
    }
    missing = [(i, book.phase[i]) for i in book.ids if i not in stored]
    letters = await dead_letters(nc, settings)
    return (
        f"{len(rows)} not final, e.g. {[(dict(r), book.phase[r['intent_id']]) for r in rows[:6]]}; "
        f"{len(missing)} with no order row, e.g. {missing[:6]}; {len(letters)} dead letters, e.g. "
        f"{[(d.original_subject, d.error, d.delivery_count) for d in letters[:6]]}"
    )


async def check_the_day(
    nc: NatsClient,
    db: AsyncEngine,
    settings: Settings,
    book: Book,
    broker: str,
    venue: Venue,
    timeline: Timeline,
    day_notes: list[str],
) -> None:
    """Every check of the day; all are made, and what fails is reported together (each names
    its evidence), so one run tells which parts of the day a broker's adapter gets wrong."""
    ids, expected = book.ids, book.expected()
    problems: list[str] = list(day_notes)

    letters = await dead_letters(nc, settings)
    if letters:
        problems.append(
            f"{len(letters)} dead letters: "
            + str([(d.original_subject, d.correlation_id, book.phase.get(d.correlation_id), d.error) for d in letters])
        )

    # One order row per intent and broker it was routed to; the last attempt's is its outcome.
    rows = await fetch_all(
        db,
        "SELECT intent_id, broker_name, broker_order_id, status, filled_quantity, reason, attempt, updated_at "
        "FROM orders WHERE intent_id = ANY(:ids) ORDER BY intent_id, attempt",
        ids=ids,
    )
    final = {r["intent_id"]: r for r in rows}
    if len(final) != len(ids):
        problems.append(f"{len(ids) - len(final)} intents have no order row")
    wrong = [
        (r["intent_id"], book.phase[r["intent_id"]], r["broker_name"], r["status"], str(r["filled_quantity"]),
         expected[r["intent_id"]], r["reason"])
        for r in final.values()
        if (r["status"], Decimal(r["filled_quantity"])) != expected[r["intent_id"]]
    ]  # fmt: skip
    if wrong:
        by_phase = Counter(w[1] for w in wrong)
        problems.append(f"{len(wrong)} intents ended otherwise than their story ({dict(by_phase)}), e.g. {wrong[:6]}")

    finals: Counter[str] = Counter()
    for stored in await read_stream(
        nc.jetstream(), settings.subjects.stream_name("EXECUTIONS"), f"{settings.subject_prefix}.exec.>"
    ):
        report = json.loads(stored.data)
        if report.get("final"):
            finals[report["intent_id"]] += 1
    not_one = {i: finals[i] for i in ids if finals[i] != 1}
    if not_one:
        problems.append(f"not exactly one final report: {dict(list(not_one.items())[:8])} ({len(not_one)} intents)")

    with venue.lock:
        placed, at_fake_fills, counters = Counter(venue.placed()), venue.fills(), venue.counters()
    if venue.placed_by_order_id:  # attributed by the broker order ids mbx recorded
        owners = {r["broker_order_id"]: r["intent_id"] for r in rows if r["broker_name"] == broker}
        unknown = [o for o in placed if o not in owners]
        if unknown:
            problems.append(f"{len(unknown)} orders at the broker that mbx has no record of: {unknown[:8]}")
        placed = Counter(owners[o] for o in placed.elements() if o in owners)
    doubled = {c: n for c, n in placed.items() if n > 1}
    if doubled:
        problems.append(f"more than one order for an intent at the broker: {doubled}")
    here = {r["intent_id"] for r in rows if r["broker_name"] == broker and r["broker_order_id"]}
    elsewhere = {i: r["broker_name"] for i, r in final.items() if r["broker_name"] != broker}
    if set(placed) & set(elsewhere):
        problems.append(
            f"intents that ended elsewhere also have an order at the broker: {set(placed) & set(elsewhere)}"
        )
    if set(placed) - set(elsewhere) != here:
        problems.append(
            f"orders at the broker differ from mbx's record: {sorted((set(placed) - set(elsewhere)) ^ here)}"
        )

    stored_fills = await fetch_all(
        db,
        "SELECT broker_order_id, quantity, price FROM trade_logs WHERE broker_name = :b AND intent_id = ANY(:ids)",
        b=broker,
        ids=ids,
    )
    ours = Counter((r["broker_order_id"], Decimal(r["quantity"]), Decimal(r["price"])) for r in stored_fills)
    theirs = Counter(at_fake_fills)
    if ours != theirs:
        problems.append(
            f"fills in Postgres differ from the broker's ({sum(ours.values())} vs {sum(theirs.values())}): "
            f"only in Postgres {list((ours - theirs).elements())[:4]}, only at the broker "
            f"{list((theirs - ours).elements())[:4]}"
        )

    if counters.get("refused") or counters.get("before_reset") or counters.get("over_daily_cap"):
        problems.append(
            "the broker refused requests (429) for exceeding the limit mbx knows (`refused`), for coming "
            f"before a 429's reset (`before_reset`) or past the daily order cap (`over_daily_cap`): {counters}"
        )

    failovers = await fetch_all(
        db,
        "SELECT intent_id, reason_code FROM failover_events WHERE failed_broker = :b AND intent_id = ANY(:ids)",
        b=broker,
        ids=ids,
    )
    reasons: dict[str, set[str]] = defaultdict(set)
    for f in failovers:
        reasons[f["intent_id"]].add(f["reason_code"])
    unexplained = {i: (book.phase[i], sorted(r)) for i, r in reasons.items() if not r <= FAILOVER_REASONS}
    if unexplained:
        problems.append(f"failovers without one of the reasons {sorted(FAILOVER_REASONS)}: {unexplained}")
    missing = venue.expected_reasons - {c for r in reasons.values() for c in r}
    if missing:
        problems.append(f"no failover with {sorted(missing)} although the day reaches it at this broker")

    # The 429's reset was most of a window away: a route that had to wait for it went back to
    # the router at once; none waited for the reset.
    waited = {
        i: round(final[i]["updated_at"].timestamp() - book.published[i], 1)
        for i in ids
        if book.phase[i] == "rate_limited" and i in final
        and final[i]["updated_at"].timestamp() - book.published[i] > MAX_QUEUE_WAIT_S + SETTLE_S
    }  # fmt: skip
    if venue.fails_over and waited:
        problems.append(
            f"{len(waited)} routes of the 429 burst took longer than max_queue_wait_s ({MAX_QUEUE_WAIT_S} s) + "
            f"{SETTLE_S} s to end (seconds: {waited}); where the burst ended: "
            f"{dict(Counter(final[i]['broker_name'] for i in ids if book.phase[i] == 'rate_limited' and i in final))}; "
            f"failovers: {dict(Counter(c for i, r in reasons.items() if book.phase[i] == 'rate_limited' for c in r))}"
        )

    ended = Counter((book.phase[i], r["broker_name"], r["status"]) for i, r in final.items())
    # Why first routes went elsewhere (the router's own words for the broker it passed over).
    passed_over = Counter(
        (
            book.phase[r["intent_id"]],
            r["rule"],
            str([e.get("reason") for e in r["excluded"] or [] if e.get("broker") == broker])[:200],
        )
        for r in await fetch_all(
            db,
            "SELECT intent_id, rule, decision->'excluded' AS excluded FROM multi_broker_routes "
            "WHERE intent_id = ANY(:ids) AND attempt = 1 AND broker_name <> :b",
            ids=ids,
            b=broker,
        )
    )
    why = Counter((book.phase[i], c) for i, r in reasons.items() for c in r)
    assert problems == [], (
        f"{broker}'s bad day:\n- " + "\n- ".join(problems) + f"\nthe fake's counters: {counters}\n"
        f"how intents ended (phase, broker, status): {dict(ended)}\nfailovers (phase, reason): {dict(why)}\n"
        f"first routes elsewhere (phase, rule, excluded): {dict(passed_over)}\ntimeline: {timeline.ran}"
    )
