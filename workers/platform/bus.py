"""NATS JetStream plumbing shared by the workers: topology, publishing, dead letters.

Stream and consumer *definitions* live in ``contracts.subjects``; this module applies them with
nats-py. ``pull_subscribe`` only creates a durable when it is missing, so changed consumer
settings are applied here explicitly at start-up.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import pydantic_core
import structlog
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
)

from contracts import (
    INTENT_ID_HEADER,
    MSG_ID_HEADER,
    REPLAY_HEADER,
    STRATEGY_ID_HEADER,
    DeadLetter,
    DeadLetterStage,
    Message,
    StreamSpec,
    Subjects,
)
from contracts.client import publish_retrying, sent_again, unavailable_errors
from contracts.messages import DEAD_LETTER_MAX_PAYLOAD
from workers.platform import telemetry
from workers.platform.topology import ConsumerSpec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js.kv import KeyValue

log = structlog.get_logger("mbx.bus")

BUS_UNAVAILABLE = unavailable_errors()
"""What NATS answers while it cannot serve a request yet (the client library's list)."""

PUBLISH_TIMEOUT = 5.0
"""Seconds one send waits for its PubAck."""
RETRY_FOR_S = 30.0
"""How long a worker sends a publish again (the same ``Nats-Msg-Id``) while the stream does not
answer: a cluster elects a stream's new leader in 4-8 s after losing a node, a restarted single
server takes longer. The message in hand is kept in progress meanwhile, so it is not delivered
elsewhere; past this the handler fails and the message comes back later. Far inside every
stream's duplicate window, so a send that was stored after all is stored once."""
PayloadEncoding = Literal["utf-8", "base64"]
HEADER_MAX = 1024
"""Characters of each header name and value a dead letter keeps."""
HEADERS_MAX = 64
"""Headers a dead letter keeps."""
MAX_JSON_BYTES = 1024 * 1024
"""Largest payload ``read_json`` parses (nats-server's default ``max_payload``, and mbx's)."""
NO_STREAM_FOR_S = 5.0
"""How long a JetStream write that reached no stream is sent again (see ``JetStream``)."""


class JetStream(JetStreamContext):
    """nats-py's JetStream context, except that a publish answered "no responders" (so every KV
    write too) is sent again for up to ``NO_STREAM_FOR_S`` seconds, as nats.go does and nats-py
    does not. On a cluster a stream or bucket just created is served by each server a moment
    after the create returns: a write through a server that has not caught up reaches no stream
    (seen in CI: the router's first config write, right after it made the bucket). Nothing was
    stored, so sending again is safe even for a compare-and-set write."""

    async def publish(self, *args: Any, **kwargs: Any) -> PubAck:
        publish = super().publish
        return await sent_again(lambda: publish(*args, **kwargs), (NoStreamResponseError,), NO_STREAM_FOR_S)


def jetstream(nc: NatsClient, timeout: float = PUBLISH_TIMEOUT) -> JetStream:
    """The JetStream context every part of mbx writes through (``JetStream``)."""
    return JetStream(nc, timeout=timeout)


_replicas = 1


def use_replicas(replicas: int) -> None:
    """Copies of every stream and KV bucket this process creates (``MBX_STREAM_REPLICAS``:
    1 on a single server, 3 on a cluster). Set once at start, before anything is created."""
    global _replicas  # noqa: PLW0603  (one deployment setting per process, like the log config)
    _replicas = replicas


def stream_config(spec: StreamSpec) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        description=spec.description or None,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=spec.max_age_seconds,
        duplicate_window=spec.duplicate_window_seconds,
        max_msgs_per_subject=spec.max_msgs_per_subject,
        discard=DiscardPolicy.OLD,
        num_replicas=_replicas,
    )


def consumer_config(spec: ConsumerSpec) -> ConsumerConfig:
    subjects = list(spec.filter_subjects)
    return ConsumerConfig(
        durable_name=spec.durable,
        description=spec.description or None,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=spec.ack_wait_seconds,
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        filter_subject=subjects[0] if len(subjects) == 1 else None,
        filter_subjects=subjects if len(subjects) > 1 else None,
    )


async def ensure_streams(js: JetStreamContext, subjects: Subjects) -> None:
    """Create every stream, or update it to the current definition."""
    for spec in subjects.streams:
        config = stream_config(spec)
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            await js.add_stream(config)
            log.info("stream created", stream=spec.name)
        else:
            config.num_replicas = _kept_replicas(spec.name, info.config.num_replicas)
            await js.update_stream(config)


def _kept_replicas(stream: str, existing: int | None) -> int:
    """Copies a stream keeps: raised to ``MBX_STREAM_REPLICAS`` (JetStream copies the data), never
    lowered by a process that was started without the setting; lowering is an operator's
    deliberate act (``nats stream edit --replicas``)."""
    existing = existing or 1
    if _replicas < existing:
        log.warning(
            "MBX_STREAM_REPLICAS is lower than the copies this stream keeps; kept as it is",
            stream=stream,
            setting=_replicas,
            copies=existing,
        )
        return existing
    if _replicas > existing:
        log.info("stream copies raised", stream=stream, copies=_replicas, were=existing)
    return _replicas


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    """Create the durable consumer, or apply the current settings to the existing one."""
    config = consumer_config(spec)
    try:
        await js.consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        await js.add_consumer(spec.stream, config)
        log.info("consumer created", stream=spec.stream, consumer=spec.durable)
    else:
        # add_consumer with an existing durable name updates it in place (CONSUMER.CREATE
        # accepts changes to editable fields such as max_deliver and ack_wait).
        await js.add_consumer(spec.stream, config)


def headers_for(message: Message, intent_id: str = "", strategy_id: str = "") -> dict[str, str]:
    """JetStream dedup header plus the routing headers subscribers filter on cheaply."""
    headers = telemetry.inject({MSG_ID_HEADER: message.message_id})
    if intent_id:
        headers[INTENT_ID_HEADER] = intent_id
    if strategy_id:
        headers[STRATEGY_ID_HEADER] = strategy_id
    return headers


async def publish(
    js: JetStreamContext, subject: str, message: Message, *, intent_id: str = "", strategy_id: str = ""
) -> bool:
    """Publish with the message id as ``Nats-Msg-Id`` and wait for the PubAck.

    Returns True when JetStream had already stored this message id (a deduplicated retry).
    """
    ack, _ = await _send(js, subject, message, intent_id, strategy_id)
    return bool(ack.duplicate)


async def publish_checked(
    js: JetStreamContext, subject: str, message: Message, *, intent_id: str = "", strategy_id: str = ""
) -> bytes | None:
    """Publish like ``publish``; when JetStream already stored this message id with other
    content (anything but ``created_at``), return the stored payload instead of ignoring it:
    two writers used one id for two different messages, and the caller must reconcile."""
    ack, data = await _send(js, subject, message, intent_id, strategy_id)
    if not ack.duplicate:
        return None
    stored = await js.get_msg(ack.stream, ack.seq)
    return None if _same_message(stored.data or b"", data) else stored.data


async def _send(
    js: JetStreamContext, subject: str, message: Message, intent_id: str, strategy_id: str
) -> tuple[PubAck, bytes]:
    data = message.model_dump_json().encode()
    return await send(js, subject, data, headers_for(message, intent_id, strategy_id)), data


async def send(js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str]) -> PubAck:
    """Publish ``data`` and wait for its PubAck, sent again while the stream does not answer."""
    return await publish_retrying(js, subject, data, headers, timeout=PUBLISH_TIMEOUT, retry_for=RETRY_FOR_S)


BUILD_DEPENDENT = ("created_at", "first_fill_at")
"""Fields two builds of one message may differ in: ``created_at`` is when it was built, and an
execution report's ``first_fill_at`` is known only when the broker's answer listed the order's
fills. Compared, it would make two honest builds of one report a conflict for the executor to
reconcile; while it was compared, the worker-kill test stranded resting Schwab orders (left
accepted or partly filled) in two runs of three."""


def _same_message(stored: bytes, ours: bytes) -> bool:
    """The same message, built twice."""
    first, second = json.loads(stored), json.loads(ours)
    for name in BUILD_DEPENDENT:
        first.pop(name, None)
        second.pop(name, None)
    return bool(first == second)


def is_replay(msg: Msg) -> bool:
    return bool((msg.headers or {}).get(REPLAY_HEADER))


def delivery_count(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # noqa: BLE001  (a core message has no metadata; count it as one delivery)
        return 1


def stored_at(msg: Msg) -> datetime | None:
    """When the stream stored ``msg`` (the server's clock); None for a core message."""
    try:
        stamp = msg.metadata.timestamp
    except Exception:  # noqa: BLE001  (a core message has no metadata)
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def stream_sequence(msg: Msg) -> int | None:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:  # noqa: BLE001  (same as above)
        return None


def make_dead_letter(stage: DeadLetterStage, msg: Msg, error: str) -> DeadLetter:
    """The dead letter of ``msg``: its payload once (text, or base64 when not UTF-8), cut to
    ``DEAD_LETTER_MAX_PAYLOAD`` characters with its size and hash, so the letter always fits."""
    headers = {str(k)[:HEADER_MAX]: str(v)[:HEADER_MAX] for k, v in list((msg.headers or {}).items())[:HEADERS_MAX]}
    seq = stream_sequence(msg)
    letter_id = f"dlq-{stage}-{_stream_name(msg)}-{seq}" if seq is not None else uuid.uuid4().hex
    raw = msg.data or b""
    encoding: PayloadEncoding = "utf-8"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    truncated = len(text) > DEAD_LETTER_MAX_PAYLOAD
    return DeadLetter(
        message_id=letter_id,
        correlation_id=headers.get(INTENT_ID_HEADER) or _intent_id_in(raw),
        stage=stage,
        original_subject=msg.subject,
        original_headers=headers,
        payload=text[:DEAD_LETTER_MAX_PAYLOAD],
        payload_encoding=encoding,
        payload_size=len(raw),
        payload_sha256=hashlib.sha256(raw).hexdigest(),
        payload_truncated=truncated,
        error=error[:2000],
        delivery_count=delivery_count(msg),
        stream_sequence=seq,
    )


def read_json(raw: bytes, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON payload from the bus, parsed within bounds: at most ``max_bytes`` and a nesting
    depth the parser's own limit (pydantic-core's, 200 levels) caps, so no payload can make a
    worker recurse without end (the standard library's ``json`` raises ``RecursionError``
    on 20 KB of ``[[[``). Raises ``ValueError`` saying why not."""
    if len(raw) > max_bytes:
        raise ValueError(f"payload of {len(raw):,} bytes, over the {max_bytes:,} a payload may have")
    return pydantic_core.from_json(raw)


def _intent_id_in(raw: bytes) -> str:
    """The intent id a JSON payload names, so a letter can be found by it even when the sender
    set no Mbx-Intent-Id header ("" when there is none or it is not plausible)."""
    try:
        data = read_json(raw)
    except ValueError:
        return ""
    value = data.get("intent_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 200 else ""


def _stream_name(msg: Msg) -> str:
    try:
        return str(msg.metadata.stream)
    except Exception:  # noqa: BLE001  (core message)
        return "core"


async def dead_letter(js: JetStreamContext, subjects: Subjects, stage: DeadLetterStage, msg: Msg, error: str) -> None:
    """Copy a message to ``<prefix>.dlq.<stage>`` (waiting for the PubAck), then ack the original.

    The copy's id is derived from the original's stream sequence, so a crash between the copy
    and the ack cannot create a second dead letter for the same delivery.
    """
    letter = make_dead_letter(stage, msg, error)
    strategy_id = str((msg.headers or {}).get(STRATEGY_ID_HEADER, ""))[:HEADER_MAX]
    subject = subjects.dlq(stage)
    try:
        await publish(js, subject, letter, intent_id=letter.correlation_id, strategy_id=strategy_id)
    except MaxPayloadError:
        # A server configured with a smaller limit: keep what identifies the message, not its body.
        bare = letter.model_copy(update={"payload": "", "payload_truncated": True, "original_headers": {}})
        await publish(js, subject, bare, intent_id=letter.correlation_id, strategy_id=strategy_id)
    await msg.ack()
    log.warning(
        "dead-lettered", stage=str(stage), subject=msg.subject, error=error[:300], deliveries=letter.delivery_count
    )


async def open_bucket(js: JetStream, bucket: str, history: int = 1, ttl: float | None = None) -> KeyValue:
    """A KV bucket, created on first use; ``ttl`` (seconds) expires entries not written since."""
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(bucket=bucket, history=history, ttl=ttl, replicas=_replicas)
    if _replicas > 1:  # a bucket made before the cluster (or the setting) gets its copies now
        stream = f"KV_{bucket}"
        info = await js.stream_info(stream)
        copies = _kept_replicas(stream, info.config.num_replicas)
        if copies != (info.config.num_replicas or 1):
            info.config.num_replicas = copies
            await js.update_stream(info.config)
    return kv


async def update_int(kv: KeyValue, key: str, next_value: Callable[[int], int]) -> int:
    """Replace the integer at ``key`` (0 when missing) with ``next_value(current)`` by
    compare-and-set, again when another writer got there first; the value written.
    ``next_value`` may raise to write nothing."""
    while True:
        try:
            entry = await kv.get(key)
            current, revision = int(entry.value or b"0"), entry.revision
        except KeyNotFoundError:
            current, revision = 0, None
        value = next_value(current)
        try:
            if revision is None:
                await kv.create(key, str(value).encode())
            else:
                await kv.update(key, str(value).encode(), last=revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            continue  # nats-py's create says either when the key appeared meanwhile
        return value


class LazyBucket:
    """A KV bucket opened (created when missing) at first use: a worker builds its parts before
    it connects. Call it for the bucket."""

    def __init__(self, js: Callable[[], JetStream], name: str, ttl: float | None = None) -> None:
        self._js, self.name, self._ttl = js, name, ttl
        self._kv: KeyValue | None = None

    async def __call__(self) -> KeyValue:
        if self._kv is None:
            self._kv = await open_bucket(self._js(), self.name, ttl=self._ttl)
        return self._kv


async def read_bucket(js: JetStreamContext, bucket: str, keys: str = ">") -> list[tuple[str, bytes]]:
    """Every current (key, value) of a KV bucket matching ``keys``, read in one pass.

    Not nats-py's KV watch or ``keys()``: under concurrent load their "initial values done"
    marker can come before the values (measured here: a listing of 400 keys returned none). An
    ephemeral pull consumer knows its pending count from creation, and each message says how
    many remain.
    """
    return [(key, value) for key, value, _ in await _read_kv(js, bucket, keys, DeliverPolicy.LAST_PER_SUBJECT)]


async def read_history(js: JetStreamContext, bucket: str, key: str) -> list[tuple[int, bytes]]:
    """Every kept (revision, value) of one key, oldest first (instead of ``KeyValue.history``,
    which rests on the same unreliable watch marker and can report no keys at all)."""
    return [(revision, value) for _, value, revision in await _read_kv(js, bucket, key, DeliverPolicy.ALL)]


async def _read_kv(js: JetStreamContext, bucket: str, keys: str, policy: DeliverPolicy) -> list[tuple[str, bytes, int]]:
    prefix = f"$KV.{bucket}."
    messages = await read_stream(js, f"KV_{bucket}", prefix + keys, policy)
    return [(m.subject[len(prefix) :], m.data, m.metadata.sequence.stream) for m in messages if m.data]


async def read_stream(
    js: JetStreamContext, stream: str, subject: str, policy: DeliverPolicy = DeliverPolicy.ALL
) -> list[Msg]:
    """Every stored message of ``stream`` on ``subject`` (wildcards allowed), in order, read with
    an ephemeral pull consumer that knows from creation how many there are."""
    return [m async for m in iter_stream(js, stream, subject, ConsumerConfig(deliver_policy=policy))]


READER_IDLE_S = 10.0
"""A reader's ephemeral consumer is deleted when done; if its process dies first, the server
removes it after this many idle seconds."""


async def iter_stream(js: JetStreamContext, stream: str, subject: str, config: ConsumerConfig) -> AsyncIterator[Msg]:
    """``read_stream`` a batch at a time, from where ``config`` says (e.g. a start sequence):
    for streams too long to hold in memory at once."""
    config.ack_policy, config.inactive_threshold = AckPolicy.NONE, READER_IDLE_S
    psub = await js.pull_subscribe(subject, stream=stream, config=config)
    name = ""
    try:
        info = await psub.consumer_info()
        name, remaining = info.name, info.num_pending or 0
        while remaining > 0:
            batch = await psub.fetch(min(remaining, 256), timeout=5.0)
            for message in batch:
                yield message
            remaining = batch[-1].metadata.num_pending
    finally:
        await psub.unsubscribe()
        if name:
            # Deleted at once: a stream holds at most 1000 consumers (nats-server 2.15's
            # default), and a reader per broker lookup would otherwise outlive its use.
            with contextlib.suppress(Exception):  # not deleted: the idle threshold removes it
                await js.delete_consumer(stream, name)
