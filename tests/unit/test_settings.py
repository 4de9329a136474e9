"""Configuration: defaults, the YAML shape, and errors that name the bad key."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from contracts import BrokerName
from workers.domain.config import ConfigError, parse_config
from workers.platform.logs import redact_url
from workers.platform.settings import DEFAULT_CONFIG_FILE, Settings, load_config


def test_shipped_config_file_loads_with_every_broker_enabled() -> None:
    """config/mbx.yaml is valid without any broker credentials set (paper trading)."""
    config = load_config(DEFAULT_CONFIG_FILE)
    assert config.enabled_brokers() == list(BrokerName)
    assert config.risk.max_broker_allocation == Decimal("0.8")
    assert (config.routing.weights.cost, config.routing.weights.speed, config.routing.weights.fill) == (0.4, 0.3, 0.3)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"brokers": {"alpaca": {"allocation_percentt": 1}}}, "brokers.alpaca.allocation_percentt: unknown key"),
        ({"brokers": {"alpaca": {"allocation_percent": 1.5}}}, "brokers.alpaca.allocation_percent"),
        ({"brokers": {"etrade": {}}}, "brokers.etrade"),
        ({"routing": {"weights": {"cost": 0.5}}}, "routing.weights: cost + speed + fill must be 1"),
        ({"routing": {"weights": {"cost": -0.1, "speed": 0.8, "fill": 0.3}}}, "routing.weights.cost"),
        ({"risk": {"max_broker_allocation": 2}}, "risk.max_broker_allocation"),
        ({"risk": {"min_broker_diversification": 0}}, "risk.min_broker_diversification"),
        ({"brokers": {"alpaca": {"paper_trading": False}}}, "brokers.alpaca.paper_trading"),
        ({"databse": {}}, "databse: unknown key"),
        ([1, 2], "top level must be a mapping"),
    ],
)
def test_invalid_config_names_the_bad_key(raw: object, message: str) -> None:
    """Every invalid config fails with a message that names the key."""
    with pytest.raises(ConfigError, match=message.replace("+", r"\+").replace(".", r"\.")):
        parse_config(raw)


def test_credentials_come_from_the_environment_and_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    """${VAR} is expanded; the value is a secret in every rendering of the config."""
    monkeypatch.setenv("ALPACA_API_KEY", "sekrit-key-123")
    config = parse_config({"brokers": {"alpaca": {"credentials": {"api_key": "${ALPACA_API_KEY}"}}}})
    assert config.brokers[BrokerName.ALPACA].credentials["api_key"].get_secret_value() == "sekrit-key-123"
    for rendering in (repr(config), str(config), config.model_dump_json()):
        assert "sekrit-key-123" not in rendering


def test_unset_credentials_are_fine_for_paper_brokers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A paper broker needs no keys; the variable may stay unset."""
    monkeypatch.delenv("NOPE_KEY", raising=False)
    config = parse_config({"brokers": {"alpaca": {"credentials": {"api_key": "${NOPE_KEY}"}}}})
    assert config.brokers[BrokerName.ALPACA].paper_trading


def test_unreadable_or_broken_yaml_says_so(tmp_path: Path) -> None:
    """A missing or malformed file is a clear error, not a traceback."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("brokers: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_settings_read_the_mbx_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """MBX_* variables configure the runtime."""
    monkeypatch.setenv("MBX_NATS_URL", "nats://example:4222")
    monkeypatch.setenv("MBX_SUBJECT_PREFIX", "desk2")
    settings = Settings()
    assert settings.nats_url == "nats://example:4222"
    assert settings.subjects.intent("s") == "desk2.orders.intent.s"


def test_database_urls_get_the_psycopg_driver_and_passwords_are_redacted() -> None:
    """Logged URLs never carry a password."""
    s = Settings(database_url="postgresql://u:pw-123@h:5432/db")
    assert s.sqlalchemy_url() == "postgresql+psycopg://u:pw-123@h:5432/db"
    assert redact_url("postgresql://u:pw-123@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    with pytest.raises(ConfigError, match="not a postgresql"):
        Settings(database_url="mysql://x@h/db").sqlalchemy_url()


def _yaml_blocks(path: Path) -> list[str]:
    text = path.read_text()
    return [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]


def test_config_examples_in_the_docs_are_valid() -> None:
    """The YAML shown in README.md and docs/routing.md parses with the real config model."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    blocks = _yaml_blocks(root / "README.md") + _yaml_blocks(root / "docs" / "routing.md")
    assert len(blocks) >= 2
    for block in blocks:
        parse_config(yaml.safe_load(block), "docs example")
