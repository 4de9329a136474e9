"""The routing what-if of a config that is not applied yet, for the dashboard's "preview this
change on last week's orders": the installed `mbx whatif --json` run as a command with the
caller's database, and the report it writes read back.

Why a command: the replay must call the router's own ``route()`` (``workers.router.whatif``), the
one implementation of the routing rules, and the dashboard imports no worker (the import
contracts in pyproject.toml; ``workers.ops`` sits beside the router and may not import it
either). Running the command an operator would run keeps one replay and one report: the page
shows exactly the figures `mbx whatif --json` writes for the same config. It also keeps a week of
decisions rebuilt in memory out of the long-lived dashboard server.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any

from workers.domain.config import MbxConfig, config_to_json
from workers.ops.errors import OperatorError

ROWS_KEPT = 1000
"""Intents kept per list (changed, rejected, held): a week's full detail is the command's --csv,
not something a dashboard session should hold."""
WHATIF_TIMEOUT_S = 180.0
"""How long a preview may take: a week of a busy desk is about 100,000 decisions (see
bench/whatif_bench.py for what that costs here)."""


@dataclass(frozen=True, slots=True)
class MixRow:
    broker: str
    """A broker, or ``rejected`` for the orders the config would reject."""
    before: int
    after: int


@dataclass(frozen=True, slots=True)
class RuleCount:
    rule: str
    before: int
    after: int


@dataclass(frozen=True)
class WhatIfReport:
    """What `mbx whatif --json` writes: the summary it prints, and the first ``ROWS_KEPT``
    intents of its detail that change, would be rejected and would be held."""

    replayed: int
    changed: int
    rejected: int
    """Replayed intents the config would reject."""
    rejected_unrouted: int
    """Intents in the window that were rejected with no decision: nothing to replay."""
    mix: tuple[MixRow, ...]
    fees_before: Decimal
    fees_after: Decimal
    """Estimated fees (USD) of the chosen brokers, over the intents routed in both."""
    latency_before_ms: float | None
    latency_after_ms: float | None
    """Mean expected latency of the chosen brokers, over the intents routed in both."""
    rule_effect: tuple[RuleCount, ...]
    """Decisions per rule before and after, for each rule whose count moves."""
    held: int
    """Replayed intents the config would hold for approval before routing them."""
    held_before: int
    """Replayed intents an approval rule held when they were recorded."""
    hold_effect: tuple[RuleCount, ...]
    """Per approval rule: intents it held when recorded, and would hold now."""
    assumptions: tuple[str, ...]
    changed_rows: tuple[dict[str, Any], ...]
    """The first intents whose decision changes (the --csv columns), oldest first."""
    rejected_rows: tuple[dict[str, Any], ...]
    """The first intents the config would reject."""
    held_rows: tuple[dict[str, Any], ...]
    """The first intents the config would hold for approval."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WhatIfReport:
        detail = data["detail"]
        return cls(
            replayed=int(data["replayed"]),
            changed=int(data["changed"]),
            rejected=int(data["rejected"]),
            rejected_unrouted=int(data["rejected_unrouted"]),
            mix=tuple(MixRow(m["broker"], int(m["before"]), int(m["after"])) for m in data["mix"]),
            fees_before=Decimal(data["fees_usd"]["before"]),
            fees_after=Decimal(data["fees_usd"]["after"]),
            latency_before_ms=data["latency_ms"]["before"],
            latency_after_ms=data["latency_ms"]["after"],
            rule_effect=_counts(data["rule_effect"]),
            held=int(data["held"]),
            held_before=int(data["held_before"]),
            hold_effect=_counts(data["hold_effect"]),
            assumptions=tuple(data["assumptions"]),
            changed_rows=_first(row for row in detail if row["changed"]),
            rejected_rows=_first(row for row in detail if row["new_broker"] is None),
            held_rows=_first(row for row in detail if row["new_hold"] is not None),
        )


def _first(rows: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    return tuple(islice(rows, ROWS_KEPT))


def _counts(rows: list[dict[str, Any]]) -> tuple[RuleCount, ...]:
    return tuple(RuleCount(row["rule"], int(row["before"]), int(row["after"])) for row in rows)


async def whatif_report(
    config: MbxConfig,
    database_url: str,
    *,
    since: str = "7d",
    strategy: str | None = None,
    timeout: float = WHATIF_TIMEOUT_S,
) -> WhatIfReport:
    """``config`` replayed over the decisions recorded since ``since`` (``7d``, ``12h``) by `mbx
    whatif`, reading ``database_url``. Nothing is applied, published or placed. Raises
    ``OperatorError`` with the command's own message when it cannot replay (an empty window, the
    database unreachable) or does not finish within ``timeout`` seconds."""
    with tempfile.TemporaryDirectory(prefix="mbx-whatif-") as tmp:
        config_file, out = Path(tmp) / "candidate.json", Path(tmp) / "whatif.json"
        config_file.write_bytes(config_to_json(config))  # JSON is YAML: the command reads it as a config file
        argv = ["whatif", "--config", str(config_file), "--since", since, "--json", str(out)]
        if strategy is not None:
            argv += ["--strategy", strategy]
        # The password, if any, goes in the environment, never on a command line others can list.
        env = {**os.environ, "MBX_DATABASE_URL": database_url, "COLUMNS": "400"}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "workers",
            *argv,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise OperatorError(f"the what-if did not finish within {timeout:.0f} s: try a shorter window") from None
        if process.returncode != 0:
            raise OperatorError(_problem(stderr.decode(errors="replace"), process.returncode))
        return WhatIfReport.from_json(json.loads(out.read_text()))


def _problem(stderr: str, code: int | None) -> str:
    """The command's error line (its console wraps long lines), without the ``error:`` label."""
    text = " ".join(stderr.split())
    _, found, message = text.rpartition("error: ")
    return message if found else f"mbx whatif exited with {code}: {text[-300:] or 'no message'}"
