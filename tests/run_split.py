"""``make test``: the tests as four pytest sessions in three lanes at once.

The chaos tests (tests/chaos) run workers as processes and spend most of their time waiting: on
kills, restarts, ack waits and broker fakes; the bad-day runs (``-m bad_day``, a scripted day per
real adapter, about a minute each) wait on their timelines; the operator's tools (the dashboard in
a browser and through AppTest, the CLI as a command) wait on processes starting. Run one after
another they would take about half an hour on two cores; in three lanes (the rest; the chaos
tests; the bad-day runs, then the operator's tools) two cores finish in about the time of the
longest lane. Each session starts its own nats-server and PostgreSQL (free ports, its own
temporary directory). The rest prints as it runs; the other sessions' output follows it (and can
be followed meanwhile in the files named at the start). Exits non-zero when any part fails.

``python -m pytest`` still runs everything but the bad-day runs in one session.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
from pathlib import Path

CHAOS = "tests/chaos"
ROOT = Path(__file__).resolve().parents[1]
INTEGRATION = ROOT / "tests/integration"
CLI_TESTS = sorted({*INTEGRATION.glob("test_cli.py"), *INTEGRATION.glob("test_cli_*.py")})
OPERATOR = ["tests/dashboard", *(str(p.relative_to(ROOT)) for p in CLI_TESTS)]
"""The operator's tools: the dashboard and the CLI run as a command."""
LANES = [
    {"chaos": [CHAOS, "-m", "not bad_day"]},
    {"bad-day": [f"{CHAOS}/test_bad_day.py", "-m", "bad_day"], "operator": OPERATOR},
]
"""The lanes that run beside the rest, each its sessions one after another: name -> pytest arguments."""


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="mbx-tests-"))
    codes: dict[str, int] = {}
    logs: dict[str, Path] = {}
    current: dict[int, subprocess.Popen[bytes]] = {}
    stopping = threading.Event()

    def run_lane(k: int, lane: dict[str, list[str]]) -> None:
        for name, args in lane.items():
            if stopping.is_set():
                return
            with logs[name].open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "pytest", *args, f"--basetemp={base / name}", "-p", "no:cacheprovider"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                )
                current[k] = proc
                codes[name] = proc.wait()

    for lane in LANES:
        for name in lane:
            logs[name] = base / f"{name}.log"
            print(f"{name} runs alongside (its output follows at the end; meanwhile: tail -f {logs[name]})", flush=True)
    threads = [threading.Thread(target=run_lane, args=(k, lane)) for k, lane in enumerate(LANES)]
    for thread in threads:
        thread.start()
    ignored = [f"--ignore={path}" for path in (CHAOS, *OPERATOR)]
    try:
        rest = subprocess.call([sys.executable, "-m", "pytest", *ignored, f"--basetemp={base / 'rest'}", *sys.argv[1:]])
    except KeyboardInterrupt:
        stopping.set()
        for proc in current.values():
            proc.terminate()
        raise
    for thread in threads:
        thread.join()
    for name, log in logs.items():
        print(f"\n{'=' * 30} {name} (ran alongside) {'=' * 30}", flush=True)
        sys.stdout.write(log.read_text(errors="replace") if log.exists() else "(not run)\n")
    return next((c for c in (rest, *(codes.get(name, 1) for name in logs)) if c), 0)


if __name__ == "__main__":
    sys.exit(main())
