"""``make test``: the chaos tests and the bad-day runs beside the rest, as three pytest sessions
at once.

The chaos tests (tests/chaos) run workers as processes and spend most of their time waiting:
on kills, restarts, ack waits and broker fakes; the bad-day runs (``-m bad_day``, a scripted day
per real adapter, about a minute each) wait on their timelines. Run after the rest they would
make the suite about ten minutes longer; beside it, two cores finish all three in about the
time of the longest. Each session starts its own nats-server and PostgreSQL (free ports, its own
temporary directory). The rest prints as it runs; the other sessions' output follows it (and
can be followed meanwhile in the files named at the start). Exits non-zero when any part fails.

``python -m pytest`` still runs everything but the bad-day runs in one session.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

CHAOS = "tests/chaos"
BESIDE = {
    "chaos": [CHAOS, "-m", "not bad_day"],
    "bad-day": [f"{CHAOS}/test_bad_day.py", "-m", "bad_day"],
}
"""The sessions that run beside the rest: name -> pytest arguments."""


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="mbx-tests-"))
    running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    try:
        for name, args in BESIDE.items():
            log = base / f"{name}.log"
            print(f"{name} runs alongside (its output follows at the end; meanwhile: tail -f {log})", flush=True)
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "pytest", *args, f"--basetemp={base / name}", "-p", "no:cacheprovider"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            running[name] = (proc, log)
        rest = subprocess.call(
            [sys.executable, "-m", "pytest", f"--ignore={CHAOS}", f"--basetemp={base / 'rest'}", *sys.argv[1:]]
        )
    except KeyboardInterrupt:
        for proc, _ in running.values():
            proc.terminate()
            proc.wait()
        raise
    codes = [rest]
    for name, (proc, log) in running.items():
        codes.append(proc.wait())
        print(f"\n{'=' * 30} {name} (ran alongside) {'=' * 30}", flush=True)
        sys.stdout.write(log.read_text(errors="replace"))
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main())
