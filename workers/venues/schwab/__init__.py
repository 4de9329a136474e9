"""Charles Schwab's Trader API (``adapter: schwab``)."""

import warnings

import authlib.deprecate

with warnings.catch_warnings():
    # authlib asks httpx users to move to its "httpx2" shim, which schwab-py does not use yet.
    warnings.filterwarnings("ignore", message="The httpx module is deprecated")
    import authlib.integrations.httpx_client  # noqa: F401
