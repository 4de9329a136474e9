"""The router's journal: what it published for each intent and attempt, in a NATS KV bucket.

JetStream may deliver an intent again as if for the first time (a nats-server that crashed
loses its latest acks), and a second decision could differ from the first: a rejection after a
fill, or another broker. So a decision is written here first, with compare-and-set, and only
then published; any later delivery of the same intent and attempt finds it and republishes the
very same message (same message id: the stream drops the copy) instead of deciding again.
Entries expire with the streams (7 days).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from nats.js.api import PubAck
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from contracts import Message
from workers.domain.keys import key_token
from workers.platform.bus import JetStream, LazyBucket, headers_for, send

TTL_SECONDS = 7 * 86400


@dataclass(frozen=True, slots=True)
class Published:
    """One outcome as it was (or is about to be) published."""

    subject: str
    headers: dict[str, str]
    payload: bytes

    def encode(self) -> bytes:
        return json.dumps({"subject": self.subject, "headers": self.headers, "payload": self.payload.decode()}).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Published:
        data = json.loads(raw)
        return cls(data["subject"], dict(data["headers"]), data["payload"].encode())

    @classmethod
    def of(cls, subject: str, message: Message, intent_id: str, strategy_id: str) -> Published:
        return cls(subject, headers_for(message, intent_id, strategy_id), message.model_dump_json().encode())


def _key(intent_id: str, attempt: int) -> str:
    return f"d.{key_token(intent_id)}.{attempt}"


class DecisionJournal:
    def __init__(self, js: Callable[[], JetStream], bucket: str) -> None:
        self._js = js  # called at first use: the worker connects after it is built
        self._store = LazyBucket(js, bucket, ttl=TTL_SECONDS)

    async def claim(self, intent_id: str, attempt: int, outcome: Published) -> Published:
        """Record ``outcome`` unless this intent and attempt already has one; return the one
        that stands (``outcome`` itself when it was first)."""
        kv = await self._store()
        key = _key(intent_id, attempt)
        try:
            await kv.create(key, outcome.encode())
        except KeyWrongLastSequenceError:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:  # expired in between: ours stands
                await kv.put(key, outcome.encode())
                return outcome
            if entry.value:
                return Published.decode(entry.value)
            await kv.put(key, outcome.encode())
        return outcome

    async def first(self, intent_id: str) -> Published | None:
        """What was published for the intent's first attempt, if it was decided."""
        kv = await self._store()
        try:
            entry = await kv.get(_key(intent_id, 1))
        except KeyNotFoundError:
            return None
        return Published.decode(entry.value) if entry.value else None

    async def publish(self, outcome: Published) -> PubAck:
        """Publish ``outcome`` and wait for the PubAck (a copy of an earlier publish is dropped
        by the stream's deduplication, and acknowledged with the first one's sequence)."""
        return await send(self._js(), outcome.subject, outcome.payload, outcome.headers)
