"""How every benchmark reports: a readable table on stdout and a JSON file in bench/results/."""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Mapping
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def publish(title: str, name: str, results: Mapping[str, float]) -> None:
    width = max(len(k) for k in results)
    print(title)
    for key, value in results.items():
        print(f"  {key:<{width}}  {value:>12,}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"python": platform.python_version(), **results}, indent=2))


def sizes(module: str, doc: str | None, *counts: tuple[str, int, str]) -> list[int]:
    """The benchmark's optional positional sizes (name, default, what it is), read from the
    command line with ``--help`` and clear errors instead of a traceback."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or "").split("\n")[0])
    for name, default, what in counts:
        parser.add_argument(name, nargs="?", type=int, default=default, help=f"{what} (default {default:,})")
    args = parser.parse_args()
    for name, *_ in counts:
        if getattr(args, name) < 0:
            parser.error(f"{name} must be 0 or more")
    return [getattr(args, name) for name, *_ in counts]
