"""`mbx auth schwab` logs in against the fake Schwab OAuth server on a loopback port, as a user
would in a terminal: it prints the address, the "browser" logs in and is sent to the callback,
the address is pasted back, and the tokens land in the token file (0600) and work."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import httpx

from tests.fakes.schwab import FakeSchwab
from tests.fakes.serve import serve
from workers.venues.schwab.tokens import TokenStore
from workers.venues.schwab.venue import SchwabVenue

CALLBACK = "https://127.0.0.1:8182"


def auth_env(tmp_path: Path, fake: FakeSchwab, url: str) -> dict[str, str]:
    config = tmp_path / "mbx.yaml"
    config.write_text(
        "brokers:\n  schwab:\n    adapter: schwab\n"
        f"    base_url: {url}\n"
        '    credentials: {app_key: "${SCHWAB_APP_KEY}", app_secret: "${SCHWAB_APP_SECRET}"}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MBX_")}
    return env | {
        "COLUMNS": "200",
        "MBX_CONFIG_FILE": str(config),
        "MBX_SCHWAB_TOKEN_FILE": str(tmp_path / "secrets" / "schwab.json"),
        "SCHWAB_APP_KEY": fake.app_key,
        "SCHWAB_APP_SECRET": fake.app_secret,
    }


async def login(env: dict[str, str], browser: object) -> tuple[int, str]:
    """Run `mbx auth schwab`; ``browser`` turns the printed address into the redirected one."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers", "auth", "schwab",
        env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    seen = []
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 90)).decode()
        assert line, "".join(seen)
        seen.append(line)
        if line.startswith("http"):
            break
    proc.stdin.write((browser(line.strip()) + "\n").encode())  # type: ignore[operator]
    await proc.stdin.drain()
    rest, _ = await asyncio.wait_for(proc.communicate(), 90)
    return await proc.wait(), "".join(seen) + rest.decode()


async def test_mbx_auth_schwab_logs_in_against_the_oauth_server(tmp_path: Path) -> None:
    fake = FakeSchwab()
    with serve(fake.handle) as (url, lock):
        env = auth_env(tmp_path, fake, url)

        def browser(address: str) -> str:
            asked = httpx.URL(address)
            assert asked.path == "/v1/oauth/authorize"
            assert asked.params["client_id"] == fake.app_key and asked.params["redirect_uri"] == CALLBACK
            with lock:
                code = fake.authorize(CALLBACK)
            return f"{CALLBACK}/?code={code}&session=abc&state={asked.params['state']}"

        code, out = await login(env, browser)
        assert code == 0, out
        assert "logged in" in out and "6d 23h left" in out
        store = TokenStore(Path(env["MBX_SCHWAB_TOKEN_FILE"]))
        assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
        token = store.read()["token"]
        assert token["access_token"] not in out and token["refresh_token"] not in out

        # The stored login works for the adapter.
        venue = SchwabVenue(fake.app_key, fake.app_secret, store, base_url=url)
        account = await venue.get_account()
        assert account.account_id == "schwab-...5678"
        await venue.disconnect()

        status = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workers", "auth", "schwab", "--status",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        said, _ = await status.communicate()
        assert status.returncode == 0 and "lasts until" in said.decode()


async def test_a_wrong_or_refused_address_stores_nothing(tmp_path: Path) -> None:
    fake = FakeSchwab()
    with serve(fake.handle) as (url, _lock):
        env = auth_env(tmp_path, fake, url)
        code, out = await login(
            env, lambda address: f"{CALLBACK}/?code=not-issued&state={httpx.URL(address).params['state']}"
        )
        assert code == 1 and "Schwab refused the login: invalid_request" in out and "Traceback" not in out
        code, out = await login(env, lambda address: f"{CALLBACK}/?code=x&state=from-another-login")
        assert code == 1 and "another login attempt" in out
        code, out = await login(env, lambda address: "https://example.com/elsewhere?code=x")
        assert code == 1 and "callback URL" in out
        assert not await asyncio.to_thread(Path(env["MBX_SCHWAB_TOKEN_FILE"]).exists)
