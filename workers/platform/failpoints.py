"""Failpoints for crash tests: make a process die at an exact point of its work.

``MBX_FAILPOINTS="after_place:40,after_report:90"`` kills the process (``os._exit``, no clean-up,
like SIGKILL) the 40th time it reaches ``after_place``. Unset, every failpoint is a no-op: one
dictionary lookup on the hot path.
"""

from __future__ import annotations

import os
import sys

_targets: dict[str, int] | None = None
_hits: dict[str, int] = {}


def _load() -> dict[str, int]:
    targets = {}
    for item in filter(None, os.environ.get("MBX_FAILPOINTS", "").split(",")):
        name, _, count = item.partition(":")
        targets[name.strip()] = int(count or 1)
    return targets


def failpoint(name: str) -> None:
    global _targets  # noqa: PLW0603  (parsed once per process, on first use)
    if _targets is None:
        _targets = _load()
    if name not in _targets:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == _targets[name]:
        sys.stderr.write(f"failpoint {name} reached ({_hits[name]}): exiting now\n")
        sys.stderr.flush()
        os._exit(137)
