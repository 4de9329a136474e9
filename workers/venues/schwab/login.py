"""Schwab's OAuth2 authorization-code login, for a terminal: mbx prints the URL to open, the
user logs in at Schwab and pastes back the address the browser was sent to (the callback need
not be served: the code is in the address), and mbx trades the code for tokens and stores them.

Built on authlib, as schwab-py is, but with the server's address configurable (tests log in
against a fake OAuth server).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.httpx_client import OAuth2Client

from workers.venues.schwab.tokens import TokenStore

API_URL = "https://api.schwabapi.com"
AUTHORIZE_PATH = "/v1/oauth/authorize"
TOKEN_PATH = "/v1/oauth/token"  # noqa: S105 (an address, not a secret)
DEFAULT_CALLBACK_URL = "https://127.0.0.1:8182"


class LoginFailed(Exception):
    """The login did not complete: a sentence saying why."""


@dataclass(frozen=True, slots=True)
class Login:
    app_key: str
    app_secret: str
    callback_url: str = DEFAULT_CALLBACK_URL
    base_url: str = API_URL
    state: str = ""

    def start(self) -> tuple[str, Login]:
        """The address to open in a browser, and this login with its state set."""
        state = self.state or secrets.token_urlsafe(24)
        with OAuth2Client(self.app_key, redirect_uri=self.callback_url) as oauth:
            url, _ = oauth.create_authorization_url(self.base_url.rstrip("/") + AUTHORIZE_PATH, state=state)
        return str(url), Login(self.app_key, self.app_secret, self.callback_url, self.base_url, state)

    def finish(self, received_url: str, store: TokenStore, timeout_s: float = 30.0) -> dict[str, Any]:
        """Trade the code in ``received_url`` for tokens and store them (0600)."""
        received_url = received_url.strip()
        if not received_url.startswith(self.callback_url.rstrip("/")):
            raise LoginFailed(
                f"that address does not start with the callback URL {self.callback_url}: paste the whole address "
                "the browser was sent to after the login"
            )
        query = httpx.URL(received_url).params
        if "code" not in query:
            raise LoginFailed(f"the address holds no authorization code ({query.get('error') or 'no code'})")
        if query.get("state") != self.state:
            raise LoginFailed("the address is from another login attempt (its state differs): start again")
        try:
            with OAuth2Client(self.app_key, client_secret=self.app_secret, redirect_uri=self.callback_url) as oauth:
                oauth.timeout = httpx.Timeout(timeout_s)
                token = oauth.fetch_token(
                    self.base_url.rstrip("/") + TOKEN_PATH,
                    authorization_response=received_url,
                    state=self.state,
                    client_id=self.app_key,
                    auth=(self.app_key, self.app_secret),
                )
        except AuthlibBaseError as exc:
            raise LoginFailed(f"Schwab refused the login: {exc.error or type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise LoginFailed(f"Schwab's token endpoint could not be reached ({type(exc).__name__})") from None
        store.save_login(dict(token))
        return dict(token)
