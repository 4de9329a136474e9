"""Dead letters: find them, and send them back where they came from.

A replay republishes the original payload to the original subject under a fresh message id,
keeping the correlation headers, with ``Mbx-Replay`` set to the dead letter's id; the workers
then check whether the intent was already acted on, so a replay never executes anything twice.
Every replay is recorded in Postgres (``dlq_replays``) with the operator's name.
"""

from __future__ import annotations

import base64
import fnmatch
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import INTENT_ID_HEADER, MSG_ID_HEADER, REPLAY_HEADER, DeadLetter, DeadLetterStage, Subjects
from workers.ops.config import check_database
from workers.ops.errors import OperatorError
from workers.platform.bus import iter_stream, send
from workers.platform.db.models import DeadLetterReplay


@dataclass(frozen=True)
class Letter:
    seq: int
    letter: DeadLetter


@dataclass(frozen=True)
class Filters:
    stage: DeadLetterStage | None = None
    subject: str | None = None
    error: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    ids: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.stage or self.subject or self.error or self.since or self.until or self.ids)

    def match(self, item: Letter) -> bool:
        d = item.letter
        return (
            (self.stage is None or d.stage is self.stage)
            and (self.subject is None or fnmatch.fnmatch(d.original_subject, self.subject))
            and (self.error is None or self.error.lower() in d.error.lower())
            and (self.since is None or d.created_at >= self.since)
            and (self.until is None or d.created_at <= self.until)
            and (not self.ids or bool({str(item.seq), d.message_id, d.correlation_id} & set(self.ids)))
        )


async def find_letters(js: Any, subjects: Subjects, filters: Filters, latest: int | None = None) -> list[Letter]:
    """The dead letters ``filters`` match, oldest first; with ``latest``, only among the newest
    ``latest`` stored (a bounded read for a page that refreshes)."""
    stream = subjects.stream_name("DLQ")
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    try:
        state = (await js.stream_info(stream)).state
    except NotFoundError:
        return []  # no worker ever started: nothing was dead-lettered
    if state.messages == 0:
        return []
    if latest is not None:
        start = max(state.first_seq, state.last_seq - latest + 1)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
    found = []
    async for msg in iter_stream(js, stream, subjects.dlq("*"), config):
        try:
            item = Letter(msg.metadata.sequence.stream, DeadLetter.model_validate_json(msg.data))
        except ValueError:
            continue  # not a dead letter (published there by hand): not ours to show
        if filters.match(item):
            found.append(item)
    return found


def original_payload(letter: DeadLetter) -> bytes:
    if letter.payload_encoding == "base64":
        return base64.b64decode(letter.payload)
    return letter.payload.encode()


def replayable(letters: list[Letter]) -> tuple[list[Letter], list[Letter]]:
    """(can be replayed, cut short): a letter whose payload was cut to fit cannot be sent back."""
    return [i for i in letters if not i.letter.payload_truncated], [i for i in letters if i.letter.payload_truncated]


async def replay(
    js: Any,
    engine: AsyncEngine,
    letters: list[Letter],
    operator: str,
    on_each: Callable[[Letter], None] | None = None,
) -> int:
    """Republish each letter and record it; returns how many were replayed."""
    if not operator.strip():
        raise OperatorError("say who is replaying: the audit trail names every operator")
    await check_database(engine, "replays")  # before anything is published
    done = 0
    for item in letters:
        d = item.letter
        message_id = f"replay-{d.message_id}-{uuid.uuid4().hex[:8]}"
        headers = {k: v for k, v in d.original_headers.items() if k != MSG_ID_HEADER}
        headers |= {MSG_ID_HEADER: message_id, REPLAY_HEADER: d.message_id}
        await send(js, d.original_subject, original_payload(d), headers)
        async with engine.begin() as conn:
            await conn.execute(
                insert(DeadLetterReplay).values(
                    letter_id=d.message_id,
                    stage=str(d.stage),
                    original_subject=d.original_subject,
                    new_message_id=message_id,
                    intent_id=headers.get(INTENT_ID_HEADER) or d.correlation_id or None,
                    error=d.error,
                    replayed_by=operator.strip()[:100],
                )
            )
        done += 1
        if on_each is not None:
            on_each(item)
    return done
