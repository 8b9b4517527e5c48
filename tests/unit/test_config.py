"""Settings from file, environment and flags, with clear validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from csms.config import load_settings


def test_precedence_flags_over_env_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "csms.toml"
    config.write_text(
        'topic_prefix = "file"\nheartbeat_interval = 60\nlisten_port = 9100\n'
        '[tariff]\nenergy_price_per_kwh = "0.42"\ncurrency = "USD"\n'
    )
    monkeypatch.setenv("CSMS_HEARTBEAT_INTERVAL", "120")
    settings = load_settings(str(config), listen_port=9200)
    assert settings.topic_prefix == "file"
    assert settings.heartbeat_interval == 120
    assert settings.listen_port == 9200
    assert str(settings.tariff.energy_price_per_kwh) == "0.42"
    assert settings.tariff.currency == "USD"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("broker_url", "http://x"),
        ("redis_url", "mysql://x"),
        ("listen_port", 70000),
        ("heartbeat_interval", 0),
        ("shared_group", "a/b"),
        ("tariff_service", "no_colon"),
    ],
)
def test_bad_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        load_settings(**{field: value})
    assert field in str(caught.value)


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(str(tmp_path / "nope.toml"))
