"""A publish while the stream does not answer (a server restarting, a cluster electing a
leader): the very same message again, with a growing pause, then the last error; and a worker's
handling of a message run again in place meanwhile."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import PubAck
from nats.js.errors import NoStreamResponseError

from contracts.client import publish_retrying
from workers.platform import runtime
from workers.platform.bus import delivery_count
from workers.platform.runtime import Worker


class FlakyStream:
    """Fails ``failures`` publishes, then stores; records what every attempt sent."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []

    async def publish(self, subject: str, data: bytes, headers: dict[str, str], timeout: float) -> PubAck:
        self.sent.append((subject, data, dict(headers)))
        if self.failures:
            raise self.failures.pop(0)
        return PubAck(stream="ORDERS", seq=7)


async def test_the_same_message_is_sent_again_until_the_stream_answers() -> None:
    js: Any = FlakyStream([NatsTimeoutError(), NoStreamResponseError(), NoStreamResponseError()])
    headers = {"Nats-Msg-Id": "i-1"}
    ack = await publish_retrying(js, "mbx.orders.intent.s1", b"{}", headers, retry_for=5.0)
    assert ack.seq == 7
    assert len(js.sent) == 4 and all(s == ("mbx.orders.intent.s1", b"{}", headers) for s in js.sent)


async def test_it_gives_up_with_the_last_error_and_other_errors_are_not_retried() -> None:
    js: Any = FlakyStream([NoStreamResponseError()] * 100)
    with pytest.raises(NoStreamResponseError):
        await publish_retrying(js, "mbx.orders.intent.s1", b"{}", {"Nats-Msg-Id": "i-2"}, retry_for=0.3)
    assert 2 <= len(js.sent) <= 6  # pauses of 0.05, 0.1, 0.2 s fit in 0.3 s
    refused: Any = FlakyStream([PermissionError("denied")])
    with pytest.raises(PermissionError):
        await publish_retrying(refused, "mbx.orders.intent.s1", b"{}", {"Nats-Msg-Id": "i-3"})
    assert len(refused.sent) == 1


async def test_a_worker_handles_a_message_again_while_nats_cannot_answer_and_counts_the_rerun(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A handler that met "no response from stream" runs again in place, seeing one delivery
    more each time (so an executor looks before placing again); other errors are not rerun."""
    msg: Any = Msg(_client=None, subject="mbx.routes.alpaca")  # a core message: one delivery
    seen: list[int] = []
    failures: list[Exception] = [NoStreamResponseError(), NatsTimeoutError()]

    async def handler(m: Msg) -> str:
        seen.append(delivery_count(m))
        if failures:
            raise failures.pop(0)
        return "filled"

    monkeypatch.setattr(runtime, "BUS_PAUSE_S", (0.0, 0.0))
    assert await Worker._while_bus_answers(handler, msg) == "filled"
    assert seen == [1, 2, 3]
    assert delivery_count(msg) == 1  # the count of reruns ends with the handling

    async def refused(m: Msg) -> str:
        seen.append(delivery_count(m))
        raise ValueError("not a bus error")

    seen.clear()
    with pytest.raises(ValueError, match="not a bus error"):
        await Worker._while_bus_answers(refused, msg)
    assert seen == [1]

    monkeypatch.setattr(runtime, "RETRY_FOR_S", -1.0)
    failures[:] = [NoStreamResponseError()]
    with pytest.raises(NoStreamResponseError):
        await Worker._while_bus_answers(handler, msg)  # past the retry window: left to redelivery


async def test_a_rerun_waits_until_the_worker_is_back_on_nats(monkeypatch: pytest.MonkeyPatch) -> None:
    """While the connection is away the handler is not run again: what it knew went stale."""
    msg: Any = Msg(_client=None, subject="mbx.orders.intent.s1")
    answers = iter([False, False, True])
    asked: list[str] = []
    runs: list[int] = []

    def back() -> bool:
        asked.append("asked")
        return next(answers)

    async def handler(m: Msg) -> str:
        runs.append(len(asked))
        if len(runs) == 1:
            raise NoStreamResponseError()
        return "routed"

    monkeypatch.setattr(runtime, "BUS_PAUSE_S", (0.0, 0.0))
    assert await Worker._while_bus_answers(handler, msg, back) == "routed"
    assert runs == [0, 3]  # run again only once the third look found the connection back
