"""The parent-order worker's journal, in a NATS KV bucket of its own (``Topology.parents_bucket``).

Keys (ids may hold characters KV keys do not allow, so they are base64-encoded):
- ``p.<parent>``: the parent's ``ParentRecord``, rewritten with compare-and-set at every change, so
  two writers (replicas, or a handler and the scheduler) never overwrite each other unseen;
- ``a.<parent>``: present while the parent is active (value: its id), purged without a trace when
  it ends, so a restarted worker finds its work without reading every parent it ever had;
- ``c.<child>``: the child's parent id, written before the child is sent, so its reports find it.
Entries expire with the streams (7 days; a TWAP lasts at most 5).
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from workers.domain.keys import key_token
from workers.parents.record import ParentRecord
from workers.platform.bus import JetStream, LazyBucket, read_bucket

TTL_SECONDS = 7 * 86400
COMPRESS_ABOVE = 256 * 1024
"""Bytes of JSON above which a record is stored compressed: a 1,000-slice parent split over five
brokers is 1.5 MB of JSON, over NATS's payload limit (1 MB), and about 40 KB compressed. Smaller
records stay readable with `nats kv get`."""
_COMPRESSED = b"zlib:"


class Conflict(Exception):
    """Another writer changed the record since it was read: read it again and redo the step."""


class ParentJournal:
    def __init__(self, js: Callable[[], JetStream], bucket: str) -> None:
        self._js = js  # called at first use: the worker connects after it is built
        self.bucket = bucket
        self._store = LazyBucket(js, bucket, ttl=TTL_SECONDS)

    async def read(self, parent_id: str) -> tuple[ParentRecord | None, int]:
        """The record and its revision (0 when there is none)."""
        try:
            entry = await (await self._store()).get(f"p.{key_token(parent_id)}")
        except KeyNotFoundError:
            return None, 0
        if not entry.value:
            return None, 0
        return decode_record(entry.value), int(entry.revision or 0)

    async def create(self, record: ParentRecord) -> bool:
        """Write a new parent's record; False when it has one already (that one stands)."""
        try:
            await (await self._store()).create(f"p.{key_token(record.intent_id)}", encode_record(record))
        except KeyWrongLastSequenceError:
            return False
        return True

    async def write(self, record: ParentRecord, revision: int) -> int:
        """Replace the record read at ``revision``; raises ``Conflict`` when it changed since."""
        kv = await self._store()
        try:
            return int(await kv.update(f"p.{key_token(record.intent_id)}", encode_record(record), last=revision))
        except KeyWrongLastSequenceError as exc:
            raise Conflict(f"parent {record.intent_id} changed since revision {revision}") from exc

    async def activate(self, parent_id: str) -> None:
        await (await self._store()).put(f"a.{key_token(parent_id)}", parent_id.encode())

    async def retire(self, parent_id: str) -> None:
        """The parent has ended: no restart needs to look at it again."""
        await self._store()
        subject = f"$KV.{self.bucket}.a.{key_token(parent_id)}"
        with contextlib.suppress(Exception):  # not purged: the next scan finds it final and tries again
            await self._js().purge_stream(f"KV_{self.bucket}", subject=subject)

    async def active(self) -> list[str]:
        """Every parent not ended yet."""
        await self._store()
        return [value.decode() for _, value in await read_bucket(self._js(), self.bucket, "a.>")]

    async def index(self, child_ids: Iterable[str], parent_id: str) -> None:
        kv = await self._store()
        for child in child_ids:
            await kv.put(f"c.{key_token(child)}", parent_id.encode())

    async def parent_of(self, child_id: str) -> str | None:
        try:
            entry = await (await self._store()).get(f"c.{key_token(child_id)}")
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None


def encode_record(record: ParentRecord) -> bytes:
    # Defaults left out, and a large record compressed: a KV value must fit NATS's payload limit.
    raw = record.model_dump_json(exclude_defaults=True).encode()
    return raw if len(raw) <= COMPRESS_ABOVE else _COMPRESSED + zlib.compress(raw)


def decode_record(value: bytes) -> ParentRecord:
    if value.startswith(_COMPRESSED):
        value = zlib.decompress(value[len(_COMPRESSED) :])
    return ParentRecord.model_validate_json(value)
