"""Runtime settings (environment, prefix ``MBX_``) and reading the YAML trading config.

``Settings`` says where things are (NATS, Postgres, the config file); ``MbxConfig``
(``workers.domain.config``) says how to trade. Both are built once in an entry point and passed
down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts import Subjects
from contracts.client import split_servers
from workers.domain.config import ConfigError, MbxConfig, parse_config
from workers.platform.topology import Topology

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_FILE = REPO_ROOT / "mbx.yaml"


class Settings(BaseSettings):
    """Where mbx runs. Every field can be set as ``MBX_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MBX_", extra="ignore")

    nats_url: str | None = Field(
        default=None, description="NATS server URL, or several comma-separated (a cluster); unset = embedded server."
    )
    database_url: str | None = Field(default=None, description="Postgres URL; unset = embedded server.")
    dashboard_database_url: str | None = Field(
        default=None,
        description="The dashboard's Postgres URL (role mbx_dashboard); unset = database_url as mbx_dashboard.",
    )
    config_file: Path | None = Field(default=None, description="YAML config; unset = mbx.yaml in the repo.")
    subject_prefix: str = Field(default="mbx", description="First token of every subject.")
    data_dir: Path = Field(default=REPO_ROOT / ".mbx", description="Where the embedded servers keep data.")
    stream_replicas: int = Field(
        default=1, ge=1, le=5, description="Copies of each stream and KV bucket: 1 on one server, 3 on a cluster."
    )
    db_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="A database call (connect or batch) not done within this is treated as an outage.",
    )
    live: bool = Field(
        default=False,
        description="Allow brokers that trade real money (MBX_LIVE=1, or `mbx up --live`).",
    )
    sim_request_log: bool = Field(
        default=False,
        description="Simulated brokers log every placement and lookup in their KV book (crash tests).",
    )
    nats_user: str | None = Field(default=None, description="NATS user (`mbx security init` makes one per role).")
    nats_password_file: Path | None = Field(
        default=None, description="File holding the NATS user's password (mode 600)."
    )
    nats_ca_file: Path | None = Field(default=None, description="CA that signed the NATS servers' TLS certificates.")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve Prometheus metrics on this port (unset: not served)."
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address the metrics port listens on (0.0.0.0: every interface)."
    )
    nats_monitor_url: str | None = Field(
        default=None,
        description="nats-server's monitoring endpoint (http://host:8222): the aggregator adds its figures.",
    )
    log_level: str = "INFO"
    log_format: Literal["auto", "console", "json"] = "auto"
    durability: Literal["dev", "production"] = Field(
        default="dev",
        description="Embedded NATS fsync policy: dev = JetStream default (2 min), production = always.",
    )

    @property
    def nats_servers(self) -> list[str]:
        """``nats_url`` as a list: it may name several servers, comma-separated (a cluster)."""
        return split_servers(self.nats_url or "")

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.subject_prefix)

    @property
    def topology(self) -> Topology:
        """The workers' private side of the bus: durable consumers and internal KV buckets."""
        return Topology(self.subjects)

    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg (v3) driver, which SQLAlchemy needs spelled out."""
        if not self.database_url:
            raise ConfigError("database_url: not set (MBX_DATABASE_URL, or run `mbx up`)")
        return to_sqlalchemy_url(self.database_url)


def dashboard_database_url(settings: Settings, database_url: str) -> str:
    """The URL the dashboard connects with: ``MBX_DASHBOARD_DATABASE_URL``, else ``database_url``
    as the ``mbx_dashboard`` role without a password (the embedded server trusts local users;
    elsewhere give the role a password and set the variable)."""
    if settings.dashboard_database_url:
        return settings.dashboard_database_url
    from sqlalchemy import make_url  # noqa: PLC0415

    url = make_url(to_sqlalchemy_url(database_url)).set(username="mbx_dashboard", password=None)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def to_sqlalchemy_url(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ConfigError(f"database_url: {url.rsplit('@', maxsplit=1)[-1]!r} is not a postgresql:// URL")


def load_config(path: Path | None) -> MbxConfig:
    """Read the YAML config file; defaults when no file is given and the default is absent."""
    if path is None:
        if not DEFAULT_CONFIG_FILE.exists():
            return MbxConfig()
        path = DEFAULT_CONFIG_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return parse_config(raw, str(path))


def load_settings() -> tuple[Settings, MbxConfig]:
    """Build settings from the environment and the config they point at."""
    try:
        settings = Settings()
        settings.subjects  # noqa: B018  (validates the prefix now, not at first publish)
    except (ValidationError, ValueError) as exc:
        raise ConfigError(f"environment: {exc}") from None
    config = load_config(settings.config_file)
    if settings.database_url is None and config.database.url:
        settings = settings.model_copy(update={"database_url": config.database.url})
    return settings, config
