"""Bad input is dead-lettered at its first delivery with a readable reason, and nothing is lost:
out-of-range numbers, oversized metadata, and a payload just under the server's size limit."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import DeadLetter
from contracts.messages import DEAD_LETTER_MAX_PAYLOAD
from tests.builders import intent_payload
from tests.conftest import Pipeline, eventually
from tests.integration.test_walking_skeleton import dead_letters, final_order, publish_json
from tests.servers import Servers

pytestmark = pytest.mark.integration

HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"quantity": "1e30"}, "quantity: Input should be less than 1000000000"),
    ({"quantity": "-5"}, "quantity: Input should be greater than 0"),
    ({"quantity": "0.00000000000000000001"}, "no more than 9 decimal places"),
    ({"quantity": "NaN"}, "finite number"),
    ({"order_type": "limit", "limit_price": "1e300"}, "limit_price: Input should be less than 10000000"),
    ({"metadata": {"blob": "x" * 900_000}}, "metadata.blob: String should have at most 256 characters"),
]


async def test_out_of_range_numbers_and_huge_metadata_are_dead_lettered_at_once(
    pipeline: Pipeline, nc: NatsClient, db: AsyncEngine
) -> None:
    """Each is dead-lettered at its first delivery, with the reason and the intent id, and an
    ordinary intent sent after them fills."""
    sent = [(intent_payload(**change), why) for change, why in HOSTILE]
    for payload, _ in sent:
        await publish_json(nc, payload)
    good = intent_payload()
    await publish_json(nc, good)
    [filled] = await final_order(db, good["intent_id"])
    assert filled["status"] == "filled"

    async def letters() -> dict[str, DeadLetter] | None:
        found = {d.correlation_id: d for d in await dead_letters(nc, "router")}
        return found if all(p["intent_id"] in found for p, _ in sent) else None

    found = await eventually(letters)
    for payload, why in sent:
        letter = found[payload["intent_id"]]
        assert letter.delivery_count == 1, letter.error
        assert why in letter.error, letter.error
        assert letter.payload_truncated is (len(json.dumps(payload)) > DEAD_LETTER_MAX_PAYLOAD)


async def test_a_payload_just_under_the_server_limit_is_dead_lettered_and_can_be_shown(
    pipeline: Pipeline, nc: NatsClient, servers: Servers
) -> None:
    """A 1 MB-class payload of non-JSON bytes is kept as its beginning, size and hash; the
    letter fits, the original is acked, and `mbx dlq show` prints it."""
    junk = bytes(range(256)) * ((nc.max_payload - 4096) // 256)
    ack = await nc.jetstream().publish("mbx.orders.intent.strat1", junk)

    async def letter() -> DeadLetter | None:
        matches = [d for d in await dead_letters(nc, "router") if d.stream_sequence == ack.seq]
        return matches[0] if matches else None

    found = await eventually(letter, timeout=20)
    assert (found.payload_size, found.payload_encoding, found.payload_truncated) == (len(junk), "base64", True)
    assert found.delivery_count == 1
    info = await nc.jetstream().consumer_info("ORDERS", "router")
    assert info.num_ack_pending == 0
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workers",
        "dlq",
        "show",
        found.message_id,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "MBX_NATS_URL": servers.nats_url, "COLUMNS": "200"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode == 0, text
    assert f"{len(junk):,} bytes" in text
    assert "first 262,144 characters shown" in text
    assert json.dumps(found.payload_sha256)[1:17] in text


NESTED = [
    b"[" * 20_000,
    b"[" * 20_000 + b"]" * 20_000,
    b'{"intent_id":' * 2_000 + b'"x"' + b"}" * 2_000,
    b'{"intent_id": "deep-1", "metadata": ' + b'{"a":' * 5_000 + b"1" + b"}" * 5_000 + b"}",
]


async def test_deeply_nested_payloads_are_dead_lettered_once_and_a_valid_intent_fills(
    pipeline: Pipeline, nc: NatsClient, db: AsyncEngine
) -> None:
    """20 KB of ``[[[`` or of nested intent ids is refused as poison and dead-lettered at its
    first delivery (finding an intent id in it never recurses without end); nothing is left
    pending or redelivered, and a valid intent sent after them fills."""
    js = nc.jetstream()
    sequences = [(await js.publish("mbx.orders.intent.strat1", payload)).seq for payload in NESTED]
    good = intent_payload()
    await publish_json(nc, good)
    [filled] = await final_order(db, good["intent_id"])
    assert filled["status"] == "filled"

    async def letters() -> list[DeadLetter] | None:
        found = [d for d in await dead_letters(nc, "router") if d.stream_sequence in sequences]
        return found if len(found) >= len(sequences) else None

    found = await eventually(letters, timeout=20)
    assert sorted(d.stream_sequence for d in found) == sorted(sequences)  # each exactly once
    assert all(d.delivery_count == 1 for d in found)
    assert all("invalid OrderIntent" in d.error for d in found)
    info = await js.consumer_info("ORDERS", "router")
    assert info.num_ack_pending == 0
