"""How every benchmark reports: a readable table on stdout and a JSON file in bench/results/."""

from __future__ import annotations

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
