"""The mbx dashboard: `mbx dashboard` (or `mbx up`) serves this page with Streamlit."""

from __future__ import annotations

import streamlit as st

from dashboard import approvals, configuration, execution, portfolio, routing, status
from dashboard.backend import Backend
from workers.domain.config import ConfigError
from workers.platform.settings import Settings, load_settings

TABS = ("Broker status", "Portfolio", "Routing", "Configuration", "Execution", "Approvals")


@st.cache_resource(on_release=Backend.close, show_spinner=False)
def backend_for(nats_url: str, database_url: str, prefix: str) -> Backend:
    """One backend per stack for the life of the server (every browser session shares it)."""
    return Backend(Settings(nats_url=nats_url, database_url=database_url, subject_prefix=prefix, config_file=None))


def main() -> None:
    st.set_page_config(page_title="mbx", page_icon=":material/swap_calls:", layout="wide")
    st.title("mbx", anchor=False)
    try:
        settings, _ = load_settings()
    except ConfigError as exc:
        st.error(f"invalid configuration: {exc}")
        return
    if not settings.database_url:
        st.error("no database: start the dashboard with `mbx dashboard` (or `mbx up`), or set MBX_DATABASE_URL")
        return
    backend = backend_for(settings.nats_url or "nats://127.0.0.1:4222", settings.database_url, settings.subject_prefix)
    st.caption(f"NATS {backend.settings.nats_url} · subjects {settings.subject_prefix}.*")
    renderers = (
        status.render,
        portfolio.render,
        routing.render,
        configuration.render,
        execution.render,
        approvals.render,
    )
    for tab, render in zip(st.tabs(TABS), renderers, strict=True):
        with tab:
            render(backend)


main()
