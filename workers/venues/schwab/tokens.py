"""mbx's store of the Schwab login: one JSON file, named by ``MBX_SCHWAB_TOKEN_FILE``, written
with 0600 permissions and replaced atomically, never logged.

The file holds schwab-py's token form (``{"creation_timestamp": ..., "token": {...}}``), so
schwab-py's client reads and refreshes it through access functions. The refresh token lasts
seven days from the login and cannot be extended: ``life_left`` and ``expiry_warning`` tell
an operator when to log in again (``mbx auth schwab``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

TOKEN_FILE_ENV = "MBX_SCHWAB_TOKEN_FILE"  # noqa: S105 (names of where it is, not secrets)
DEFAULT_TOKEN_FILE = "~/.mbx/schwab-token.json"  # noqa: S105
REFRESH_TOKEN_LIFE = timedelta(days=7)
WARN_AHEAD = timedelta(days=1)
LOGIN_HINT = "run `mbx auth schwab` to log in again"


class TokenStoreError(Exception):
    """The login is missing or unreadable: a sentence naming the file and what to do."""


class TokenStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TokenStore:
        env = os.environ if env is None else env
        return cls(Path(env.get(TOKEN_FILE_ENV) or DEFAULT_TOKEN_FILE).expanduser())

    def read(self) -> dict[str, Any]:
        """The stored login in schwab-py's form."""
        try:
            stored = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise TokenStoreError(f"schwab: no login stored at {self.path}; run `mbx auth schwab`") from None
        except (OSError, ValueError) as exc:
            raise TokenStoreError(
                f"schwab: the login at {self.path} cannot be read ({type(exc).__name__}); {LOGIN_HINT}"
            ) from None
        if not isinstance(stored, dict) or "creation_timestamp" not in stored or "token" not in stored:
            raise TokenStoreError(f"schwab: {self.path} does not hold a login; {LOGIN_HINT}")
        return stored

    def write(self, stored: Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        """Replace the stored login (schwab-py's write function; it passes the refresh token
        along, unused here). The new file is 0600 from its creation, then renamed over the old."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(dict(stored), out)
        os.replace(temporary, self.path)

    def save_login(self, token: Mapping[str, Any]) -> None:
        """A fresh login: its refresh token's seven days start now."""
        self.write({"creation_timestamp": int(time.time()), "token": dict(token)})

    def expires_at(self) -> datetime | None:
        """When the refresh token ends (None: no readable login)."""
        try:
            created = float(self.read()["creation_timestamp"])
        except (TokenStoreError, TypeError, ValueError):
            return None
        return datetime.fromtimestamp(created, UTC) + REFRESH_TOKEN_LIFE


def expiry_warning(expires_at: datetime | None, now: datetime | None = None) -> str:
    """A warning from a day before the login ends ("" until then, and when there is none)."""
    if expires_at is None:
        return ""
    left = expires_at - (now or datetime.now(UTC))
    if left > WARN_AHEAD:
        return ""
    if left <= timedelta(0):
        return f"schwab: the login expired at {expires_at:%Y-%m-%d %H:%M} UTC; {LOGIN_HINT}"
    return f"schwab: the login expires in {describe(left)} (at {expires_at:%Y-%m-%d %H:%M} UTC); {LOGIN_HINT}"


def describe(left: timedelta) -> str:
    hours, seconds = divmod(max(int(left.total_seconds()), 0), 3600)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {seconds // 60}m"
