"""A worker process as ``python -m workers worker ...`` runs it, with the latency benchmark's
probes added from outside (nothing in production code knows about them):

- the moment the simulated broker is asked to place each order (``SimulatedVenue.place_order``
  entered), appended to ``<MBX_BENCH_PROBES>/placed-<pid>.jsonl`` with the intent id;
- the stages before it, in ``<MBX_BENCH_PROBES>/stages-<pid>.jsonl``: when the worker's
  delivery policy took each message up (``Worker.deliver`` entered) and when each request made
  for an intent before its broker request began (a KV write, a publish), by kind;
- every request (a round trip: a JetStream publish and its PubAck, a KV read or write, a
  JetStream API call) and every one-way publish (acks, pull requests) the process's NATS
  client makes, counted by kind. Those made while an intent is in hand (the handler bound its
  ``intent_id`` to the log context) count for that intent; in the executor, those made before
  the broker request and those made after are counted apart, and the simulated broker's own
  (its book lives in KV) are counted as the broker's. The totals are written to
  ``<MBX_BENCH_PROBES>/counts-<pid>.json`` twice a second.

Run as ``python -m bench.latency_hook worker <args>`` (the arguments of ``python -m workers``).
"""

from __future__ import annotations

import contextvars
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import structlog
from nats.aio.client import Client

from contracts.subjects import INTENT_ID_HEADER
from workers.platform.runtime import Worker
from workers.venues.simulated.venue import SimulatedVenue

PROBES = Path(os.environ.get("MBX_BENCH_PROBES", "."))
_in_broker: contextvars.ContextVar[bool] = contextvars.ContextVar("in_broker", default=False)
_in_request: contextvars.ContextVar[bool] = contextvars.ContextVar("in_request", default=False)
_lock = threading.Lock()
counts: Counter[str] = Counter()
"""'<phase>:<kind>' -> calls; phase: intent (an intent in hand), placed (after its broker
request), broker (the simulated broker's own), idle (no intent in hand)."""
intents: set[str] = set()
placed: set[str] = set()
stages = (PROBES / f"stages-{os.getpid()}.jsonl").open("a", buffering=1)


def _stage(intent: str, what: str) -> None:
    stages.write(json.dumps({"intent": intent, "stage": what, "t": time.time()}) + "\n")


def kind(subject: str, request: bool) -> str:
    if subject.startswith("$KV."):
        return "kv_write"
    if subject.startswith(("$JS.API.DIRECT.GET.KV_", "$JS.API.STREAM.MSG.GET.KV_")):
        return "kv_read"
    if subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
        return "pull"
    if subject.startswith("$JS.ACK."):
        return "ack" if not request else "ack_sync"
    if subject.startswith("$JS.API."):
        return "js_api"
    return "js_publish" if request else "core_publish"


def _note(subject: str, request: bool) -> None:
    intent = structlog.contextvars.get_contextvars().get("intent_id")
    if _in_broker.get():
        phase = "broker"
    elif intent is None:
        phase = "idle"
    else:
        phase = "placed" if intent in placed else "intent"
    what = kind(subject, request)
    with _lock:
        counts[f"{phase}:{what}"] += 1
        if intent is not None:
            intents.add(intent)
    if phase == "intent" and request:
        _stage(intent, what)


def _install() -> None:
    request, publish = Client.request, Client.publish
    place = SimulatedVenue.place_order
    out = (PROBES / f"placed-{os.getpid()}.jsonl").open("a", buffering=1)

    async def counted_request(self: Client, subject: str, *args: Any, **kwargs: Any) -> Any:
        _note(subject, True)
        token = _in_request.set(True)
        try:
            return await request(self, subject, *args, **kwargs)
        finally:
            _in_request.reset(token)

    async def counted_publish(self: Client, subject: str, *args: Any, **kwargs: Any) -> Any:
        # nats-py's request() publishes through publish(): that one is counted as the request.
        if not _in_request.get():
            _note(subject, False)
        return await publish(self, subject, *args, **kwargs)

    async def probed_place(self: SimulatedVenue, intent: Any, client_order_id: str) -> Any:
        out.write(json.dumps({"intent": intent.intent_id, "t": time.time()}) + "\n")
        with _lock:
            placed.add(intent.intent_id)
        token = _in_broker.set(True)
        try:
            return await place(self, intent, client_order_id)
        finally:
            _in_broker.reset(token)

    deliver = Worker.deliver

    async def staged_deliver(self: Worker, stage: Any, spec: Any, msg: Any, process: Any) -> str:
        headers = msg.headers or {}
        intent = headers.get(INTENT_ID_HEADER) or headers.get("Nats-Msg-Id")
        if intent is not None and intent not in placed:
            _stage(intent, f"deliver:{stage}")
        return await deliver(self, stage, spec, msg, process)

    Worker.deliver = staged_deliver  # type: ignore[method-assign]  # the benchmark's probe
    Client.request = counted_request  # type: ignore[method-assign]  # the benchmark's probe
    Client.publish = counted_publish  # type: ignore[method-assign]  # the benchmark's probe
    SimulatedVenue.place_order = probed_place  # type: ignore[method-assign]  # the benchmark's probe
    for name in ("locate", "get_order", "cancel_order"):
        original = getattr(SimulatedVenue, name)
        setattr(SimulatedVenue, name, _as_broker(original))
    threading.Thread(target=_dump, daemon=True).start()


def _as_broker(method: Any) -> Any:
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        token = _in_broker.set(True)
        try:
            return await method(*args, **kwargs)
        finally:
            _in_broker.reset(token)

    return wrapped


def _dump() -> None:
    path = PROBES / f"counts-{os.getpid()}.json"
    while True:
        with _lock:
            text = json.dumps({"counts": dict(counts), "intents": len(intents), "placed": len(placed)})
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        time.sleep(0.5)


def main() -> None:
    _install()
    sys.argv = ["workers", *sys.argv[1:]]
    from workers.cli.main import main as workers_main  # noqa: PLC0415  (after the probes are in)

    workers_main()


if __name__ == "__main__":
    main()
