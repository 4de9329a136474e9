"""A publish while the stream does not answer (a server restarting, a cluster electing a
leader): the very same message again, with a growing pause, then the last error."""

from __future__ import annotations

from typing import Any

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import PubAck
from nats.js.errors import NoStreamResponseError

from contracts.client import publish_retrying


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
