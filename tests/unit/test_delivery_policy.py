"""The delivery policy's verdicts that need no server: a failed ack after a handled message is
not a failed delivery, a deterministic error is dead-lettered at once, and a message still
waiting on something under way is never dead-lettered for its number of deliveries."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from types import SimpleNamespace
from typing import Any

from contracts import DeadLetterStage
from workers.platform.runtime import StillPending, Worker
from workers.platform.settings import Settings
from workers.platform.topology import ConsumerSpec

SPEC = ConsumerSpec(stream="ORDERS", durable="router", filter_subjects=("mbx.orders.intent.>",))


class Delivery:
    """A JetStream message on its fifth delivery whose ack cannot reach the server."""

    subject = "mbx.orders.intent.strat1"
    data = b"{}"
    headers: dict[str, str] = {}  # noqa: RUF012
    metadata = SimpleNamespace(num_delivered=5, num_pending=0, stream="ORDERS", sequence=SimpleNamespace(stream=7))

    def __init__(self) -> None:
        self.naks = 0

    async def ack(self) -> None:
        raise ConnectionError("connection closed")

    async def nak(self, delay: float | None = None) -> None:
        self.naks += 1

    async def in_progress(self) -> None:
        return None


class RecordingWorker(Worker):
    def __init__(self) -> None:
        super().__init__("test", Settings(nats_url="nats://127.0.0.1:1"))
        self.letters: list[str] = []

    async def _dead_letter(self, stage: DeadLetterStage, msg: Any, error: str) -> str:
        self.letters.append(error)
        return "dead_letter"


async def test_an_ack_that_fails_after_the_work_is_done_never_dead_letters_the_message() -> None:
    worker = RecordingWorker()
    msg = Delivery()

    async def handled(_msg: Any) -> str:
        return "routed:alpaca"

    outcome = await worker.deliver(DeadLetterStage.ROUTER, SPEC, msg, handled)  # type: ignore[arg-type]
    assert outcome == "routed:alpaca (ack failed)"
    assert worker.letters == []
    assert msg.naks == 0


async def test_an_arithmetic_error_is_dead_lettered_at_its_first_delivery_not_retried() -> None:
    worker = RecordingWorker()
    msg = Delivery()
    msg.metadata = SimpleNamespace(num_delivered=1, num_pending=0, stream="ORDERS", sequence=SimpleNamespace(stream=8))

    async def overflow(_msg: Any) -> str:
        return str(Decimal("1e30").quantize(Decimal("0.0001")))

    outcome = await worker.deliver(DeadLetterStage.ROUTER, SPEC, msg, overflow)  # type: ignore[arg-type]
    assert outcome == "dead_letter"
    assert msg.naks == 0
    assert worker.letters and worker.letters[0].startswith(InvalidOperation.__name__)


async def test_a_message_still_pending_is_retried_past_the_dead_letter_limit() -> None:
    """Crashed workers use up deliveries of every message in their hands: a route waiting on a
    same-shaped order ahead of it, or on an order that may exist, is retried whatever the count,
    while any other failure on that delivery is dead-lettered."""
    worker = RecordingWorker()
    msg = Delivery()
    msg.metadata = SimpleNamespace(num_delivered=9, num_pending=0, stream="ORDERS", sequence=SimpleNamespace(stream=9))

    async def waiting(_msg: Any) -> str:
        raise StillPending("a same-shaped order ahead of this one is unresolved")

    async def failing(_msg: Any) -> str:
        raise KeyError("a defect")

    assert await worker.deliver(DeadLetterStage.EXECUTOR, SPEC, msg, waiting) != "dead_letter"  # type: ignore[arg-type]
    assert (worker.letters, msg.naks) == ([], 1)
    assert await worker.deliver(DeadLetterStage.EXECUTOR, SPEC, msg, failing) == "dead_letter"  # type: ignore[arg-type]
    assert worker.letters == ["gave up after 9 deliveries: KeyError: 'a defect'"]
