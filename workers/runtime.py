"""What every worker shares: the FastStream broker, topology at start-up, and the delivery policy.

Delivery policy (the same for every stage):
- a message that cannot be parsed or fails validation is a ``PoisonMessage``: copied to the
  dead-letter stream with the reason, then acked; the worker carries on;
- any other exception is transient: nak with a growing delay, and after ``max_deliver``
  deliveries the message is dead-lettered with the last error;
- success: ack after everything the handler published was acknowledged by JetStream.

Every subscriber uses ``AckPolicy.MANUAL``: FastStream's JetStream default terminates a message
on any error, which would drop an order silently.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import structlog
from faststream import AckPolicy, Context
from faststream.nats import JStream, NatsBroker, PullSub
from pydantic import BaseModel, ValidationError

from contracts import ConsumerSpec, DeadLetterStage
from workers.bus import consumer_config, dead_letter, delivery_count, ensure_consumer, ensure_streams
from workers.settings import ConfigError, Settings

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

log = structlog.get_logger("mbx.worker")

M = TypeVar("M", bound=BaseModel)

# The FastStream message object (single or batch), injected without type casting.
IncomingMessage = Annotated[Any, Context("message")]


class PoisonMessage(Exception):
    """The message can never be processed as it is: dead-letter it with this reason."""


def parse(model: type[M], data: bytes) -> M:
    """Decode a payload into a contract model, or raise ``PoisonMessage`` saying why not."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in exc.errors()[:10]
        )
        raise PoisonMessage(f"invalid {model.__name__}: {problems}") from None


def retry_delay(deliveries: int) -> float:
    """Seconds before the next delivery: 0.5, 1, 2, 4 ... capped at 30."""
    return float(min(30.0, 0.5 * 2 ** max(deliveries - 1, 0)))


class Worker:
    """A FastStream NATS broker plus the topology it needs; ``start`` and ``stop`` it."""

    def __init__(self, name: str, settings: Settings) -> None:
        if not settings.nats_url:
            raise ConfigError("nats_url: not set (MBX_NATS_URL, or run `mbx up`)")
        self.name = name
        self.subjects = settings.subjects
        self.broker = NatsBroker(
            settings.nats_url,
            ack_policy=AckPolicy.MANUAL,
            graceful_timeout=15.0,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            logger=None,
        )
        self._consumers: list[ConsumerSpec] = []
        self._js: JetStreamContext | None = None

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._js

    def subscribe(self, spec: ConsumerSpec, handler: Callable[..., Awaitable[None]], *, batch_size: int,
                  batch: bool = False) -> None:
        """Attach a handler to a durable pull consumer (created or updated at start-up)."""
        self._consumers.append(spec)
        self.broker.subscriber(
            spec.filter_subjects[0],
            stream=JStream(spec.stream, declare=False),
            durable=spec.durable,
            config=consumer_config(spec),
            pull_sub=PullSub(batch_size=batch_size, timeout=1.0, batch=batch),
            ack_policy=AckPolicy.MANUAL,
        )(handler)

    async def start(self) -> None:
        await self.broker.connect()
        self._js = self.broker.connection.jetstream(timeout=5.0)
        await ensure_streams(self._js, self.subjects)
        for spec in self._consumers:
            await ensure_consumer(self._js, spec)
        await self.broker.start()
        log.info("worker started", worker=self.name)

    async def stop(self) -> None:
        await self.broker.stop()
        self._js = None
        log.info("worker stopped", worker=self.name)

    async def deliver(self, stage: DeadLetterStage, spec: ConsumerSpec, msg: Msg,
                      process: Callable[[Msg], Awaitable[str]]) -> str:
        """Run ``process`` on one message under the delivery policy; returns the outcome."""
        started = time.perf_counter()
        structlog.contextvars.bind_contextvars(subject=msg.subject)
        try:
            outcome = await process(msg)
            await msg.ack()
        except PoisonMessage as exc:
            outcome = await self._dead_letter(stage, msg, str(exc))
        except Exception as exc:  # noqa: BLE001  (every other failure is treated as transient)
            outcome = await self._retry_or_give_up(stage, spec, msg, exc)
        finally:
            structlog.contextvars.unbind_contextvars("subject", "intent_id", "broker")
        log.info("handled", stage=str(stage), subject=msg.subject, outcome=outcome,
                 duration_ms=round((time.perf_counter() - started) * 1000, 2))
        return outcome

    async def _retry_or_give_up(self, stage: DeadLetterStage, spec: ConsumerSpec, msg: Msg, exc: Exception) -> str:
        deliveries = delivery_count(msg)
        error = f"{type(exc).__name__}: {exc}"
        if deliveries >= spec.max_deliver:
            return await self._dead_letter(stage, msg, f"gave up after {deliveries} deliveries: {error}")
        log.warning("transient failure, will retry", stage=str(stage), subject=msg.subject, error=error,
                    deliveries=deliveries)
        try:
            await msg.nak(delay=retry_delay(deliveries))
        except Exception:  # noqa: BLE001  (no ack reaches the server: it redelivers after ack_wait)
            log.exception("nak failed")
        return "retry"

    async def _dead_letter(self, stage: DeadLetterStage, msg: Msg, error: str) -> str:
        try:
            await dead_letter(self.js, self.subjects, stage, msg, error)
        except Exception:  # noqa: BLE001  (left unacked: redelivered after ack_wait, nothing lost)
            log.exception("dead-lettering failed; the message will be redelivered")
            return "dead_letter_failed"
        return "dead_letter"


def batch_messages(message: Any) -> Sequence[Msg]:
    """The nats-py messages inside a FastStream batch message."""
    raw = message.raw_message
    return list(raw) if isinstance(raw, list) else [raw]
