"""``make test``: the chaos tests beside the rest, as two pytest sessions at once.

The chaos tests (tests/chaos) run workers as processes and spend most of their time waiting:
on kills, restarts, ack waits and broker fakes. Run after the rest they made the suite about
five minutes longer than either part; beside it, two cores finish both in about the time of the
longer. Each session starts its own nats-server and PostgreSQL (free ports, its own temporary
directory). The rest prints as it runs; the chaos session's output follows it (and can be
followed meanwhile in the file named at the start). Exits non-zero when either part fails.

``python -m pytest`` still runs everything in one session.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

CHAOS = "tests/chaos"


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="mbx-tests-"))
    log = base / "chaos.log"
    print(f"tests/chaos runs alongside (its output follows at the end; meanwhile: tail -f {log})", flush=True)
    with log.open("wb") as out:
        chaos = subprocess.Popen(
            [sys.executable, "-m", "pytest", CHAOS, f"--basetemp={base / 'chaos'}", "-p", "no:cacheprovider"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            rest = subprocess.call(
                [sys.executable, "-m", "pytest", f"--ignore={CHAOS}", f"--basetemp={base / 'rest'}", *sys.argv[1:]]
            )
        except KeyboardInterrupt:
            chaos.terminate()
            chaos.wait()
            raise
        chaos_code = chaos.wait()
    print(f"\n{'=' * 30} {CHAOS} (ran alongside) {'=' * 30}", flush=True)
    sys.stdout.write(log.read_text(errors="replace"))
    return rest or chaos_code


if __name__ == "__main__":
    sys.exit(main())
