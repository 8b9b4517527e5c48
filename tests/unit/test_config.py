"""Settings from file, environment and flags, with clear validation errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from csms.config import UNSETTABLE_LIMITS, load_settings


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
def test_bad_values_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        load_settings(**{field: value})
    assert field in str(caught.value)


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(str(tmp_path / "nope.toml"))


@pytest.mark.parametrize("word", ["none", "off", "", "None", " OFF "])
@pytest.mark.parametrize("field", UNSETTABLE_LIMITS)
def test_limits_can_be_unset_from_the_environment(
    field: str, word: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert getattr(load_settings(), field) is not None  # on by default
    monkeypatch.setenv(f"CSMS_{field.upper()}", word)
    assert getattr(load_settings(), field) is None


def test_limits_can_be_unset_in_toml(tmp_path: Path) -> None:
    config = tmp_path / "csms.toml"
    config.write_text(
        'message_rate = "none"\nflood_close_after = "off"\nmax_connections_per_address = "none"\n'
        "max_connections = 500\n"
    )
    settings = load_settings(str(config))
    assert settings.message_rate is None
    assert settings.flood_close_after is None
    assert settings.max_connections_per_address is None
    assert settings.max_connections == 500
    assert settings.ping_interval == 60.0


def test_only_the_unset_words_unset_a_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSMS_MESSAGE_RATE", "unlimitedish")
    with pytest.raises(ValidationError, match="message_rate"):
        load_settings()
    monkeypatch.setenv("CSMS_MESSAGE_RATE", "5")
    assert load_settings().message_rate == 5.0
    with pytest.raises(ValidationError, match="message_burst"):
        load_settings(message_burst="none")  # not a limit that can be off


def test_toml_tokens_take_a_token_type_and_a_checked_expiry(tmp_path: Path) -> None:
    config = tmp_path / "csms.toml"
    config.write_text(
        '[[tokens]]\nid_token = "04A2B3C4"\ntoken_type = "ISO14443"\n'
        'expiry = "2030-12-31T23:59:59Z"\n'
        '[[tokens]]\nid_token = "ANY"\n'
    )
    first, second = load_settings(str(config)).tokens
    assert first.token_type == "ISO14443"
    assert first.expiry == "2030-12-31T23:59:59Z"
    assert second.token_type is None


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ('token_type = "Magic"', "token_type"),
        ('expiry = "next tuesday"', "expiry"),
    ],
)
def test_toml_tokens_refuse_bad_types_and_expiries(tmp_path: Path, entry: str, field: str) -> None:
    config = tmp_path / "csms.toml"
    config.write_text(f'[[tokens]]\nid_token = "04A2B3C4"\n{entry}\n')
    with pytest.raises(ValidationError) as caught:
        load_settings(str(config))
    assert f"tokens.0.{field}" in str(caught.value)
