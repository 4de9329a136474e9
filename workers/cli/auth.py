"""``mbx auth schwab``: the broker logins that need a person (Schwab's OAuth2 login, renewed
every seven days). Registered on the ``mbx`` app by ``workers.cli``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from workers.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, console, fail, settings_and_config
from workers.domain.config import ConfigError

if TYPE_CHECKING:
    from workers.venues.schwab.tokens import TokenStore

auth_app = typer.Typer(help="Broker logins that need a person (Schwab).", no_args_is_help=True)


@auth_app.command("schwab")
def schwab(
    status: Annotated[bool, typer.Option("--status", help="Only say how long the stored login lasts.")] = False,
) -> None:
    """Log in to Schwab and store the tokens the schwab adapter uses.

    Prints an address: open it, log in at Schwab and approve the app. The browser is then sent
    to the app's callback URL (the page need not load): paste that whole address here. The
    tokens go to MBX_SCHWAB_TOKEN_FILE (default ~/.mbx/schwab-token.json, mode 0600). The login
    lasts seven days; `mbx status` warns a day ahead.

    Example: mbx auth schwab
    """
    from workers.venues.factory import schwab_login, schwab_token_store  # noqa: PLC0415
    from workers.venues.schwab.login import LoginFailed  # noqa: PLC0415

    _, config = settings_and_config()
    store = schwab_token_store()
    if status:
        line, good = login_status(store)
        console.print(line)
        raise typer.Exit(EXIT_OK if good else EXIT_FAILURE)
    try:
        url, login = schwab_login(config).start()
    except ConfigError as exc:
        fail(f'{exc}; set them in mbx.yaml from the environment, e.g. app_key: "${{SCHWAB_APP_KEY}}"', EXIT_USAGE)
    console.print("1. Open this address in a browser, log in at Schwab and approve the app:")
    print(url, flush=True)  # plain, so a terminal never wraps it with markup
    console.print(f"2. The browser is then sent to {login.callback_url} (the page need not load).")
    try:
        received = input("3. Paste that whole address here: ")
    except EOFError:
        fail("no address was pasted; nothing was stored", EXIT_USAGE)
    try:
        login.finish(received, store)
    except LoginFailed as exc:
        fail(f"{exc}; nothing was stored")
    line, _ = login_status(store)
    console.print(f"logged in. {line}")


def login_status(store: TokenStore) -> tuple[str, bool]:
    """One line on the stored login, and whether it still works."""
    from workers.venues.schwab.tokens import describe  # noqa: PLC0415

    expires = store.expires_at()
    if expires is None:
        return f"schwab: no login stored at {store.path}; run `mbx auth schwab`", False
    left = expires - datetime.now(UTC)
    if left.total_seconds() <= 0:
        return (
            f"schwab: the login at {store.path} expired at {expires:%Y-%m-%d %H:%M} UTC; run `mbx auth schwab`",
            False,
        )
    return (
        f"schwab: login stored at {store.path}; the refresh token lasts until {expires:%Y-%m-%d %H:%M} UTC "
        f"({describe(left)} left)",
        True,
    )
