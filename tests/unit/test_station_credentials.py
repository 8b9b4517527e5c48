"""Station credentials outside the stores: validation, configuration, and the ``csms password``
commands (run as subprocesses, as an operator runs them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from csms.config import Settings, StationSettings
from csms.credentials import (
    hash_password,
    is_password_hash,
    password_from_authorization_key,
    verify_password,
)
from csms.versions import OcppVersion
from services import rules
from services.factory import configured_credentials
from services.models import StationCredentials, StationRecord

ROOT = Path(__file__).resolve().parents[2]
HASH = hash_password("configured-pass-123")


def csms(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CSMS_")}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env={**clean, **env},
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- validation --------------------------------------------------------------------------------


def test_credentials_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="0, 1, 2 or 3"):
        StationCredentials(security_profile=4)
    with pytest.raises(ValueError, match=r"ocpp2\.1"):
        StationCredentials(allowed_versions=("ocpp2.1",))
    with pytest.raises(ValueError, match="not a password hash"):
        StationCredentials(password_hash="hunter2-but-longer")
    assert StationCredentials(password_hash=None).password_hash is None


def test_with_credentials_changes_only_set_fields() -> None:
    record = StationRecord(
        station_id="CS1", security_profile=2, password_hash=HASH, allowed_versions=["ocpp1.6"]
    )
    changed = rules.with_credentials(record, "CS1", StationCredentials(certificate_identity="cn"))
    assert changed.certificate_identity == "cn"
    assert (changed.security_profile, changed.password_hash) == (2, HASH)
    assert changed.allowed_versions == ["ocpp1.6"]


def test_is_password_hash() -> None:
    assert is_password_hash(HASH)
    assert not is_password_hash("configured-pass-123")
    assert not is_password_hash("scrypt$16384$8$1$not-base64$x")


def test_station_settings_take_a_hash_never_a_password() -> None:
    station = StationSettings(
        station_id="CS1",
        security_profile=2,
        password_hash=HASH,
        certificate_identity="cs1.example",
        allowed_versions=[OcppVersion.OCPP201],
    )
    assert station.password_hash == HASH
    with pytest.raises(ValidationError) as refused:
        StationSettings(station_id="CS1", password_hash="my-clear-password-1")
    assert "my-clear-password-1" not in str(refused.value)
    assert "csms password hash" in str(refused.value)
    with pytest.raises(ValidationError):
        StationSettings(station_id="CS1", security_profile=5)
    with pytest.raises(ValidationError):
        StationSettings(station_id="CS1", allowed_versions=["ocpp2.1"])  # type: ignore[list-item]


def test_redis_tls_files_need_rediss() -> None:
    with pytest.raises(ValidationError, match="rediss://"):
        Settings(redis_url="redis://localhost:6379/0", redis_ca_file="/etc/ca.pem")
    with pytest.raises(ValidationError, match="redis_cert_file"):
        Settings(redis_url="rediss://localhost:6379/0", redis_key_file="/etc/key.pem")
    settings = Settings(redis_url="rediss://u:p@localhost:6380/0", redis_ca_file="/etc/ca.pem")
    assert settings.redis_ca_file == "/etc/ca.pem"


def test_configured_credentials() -> None:
    assert configured_credentials(StationSettings(station_id="CS1"), None) is None
    station = StationSettings(
        station_id="CS1",
        security_profile=1,
        password_hash=HASH,
        allowed_versions=[OcppVersion.OCPP16],
    )
    fresh = configured_credentials(station, None)
    assert fresh == StationCredentials(
        security_profile=1, password_hash=HASH, allowed_versions=("ocpp1.6",)
    )
    # The registry's hash (a rotation) wins over the configured initial one.
    rotated = StationRecord(station_id="CS1", password_hash=hash_password("rotated-pass-4567"))
    kept = configured_credentials(station, rotated)
    assert kept == StationCredentials(security_profile=1, allowed_versions=("ocpp1.6",))


# --- csms password -----------------------------------------------------------------------------


@pytest.mark.slow  # several CLI processes, a second or more each
def test_password_generate() -> None:
    both = csms("password", "generate")
    assert both.returncode == 0, both.stderr
    password = both.stdout.strip()
    assert len(password) == 20 and password.isalnum()
    v201 = csms("password", "generate", "--version", "ocpp2.0.1", "--length", "32").stdout.strip()
    assert len(v201) == 32 and v201.isalnum()
    too_long = csms("password", "generate", "--version", "ocpp1.6", "--length", "21")
    assert too_long.returncode == 2 and "16-20" in too_long.stderr


@pytest.mark.slow  # several CLI processes, a second or more each
def test_password_hash_reads_stdin() -> None:
    made = csms("password", "hash", stdin="stdin-password-1234\n")
    assert made.returncode == 0, made.stderr
    assert verify_password("stdin-password-1234", made.stdout.strip())
    # A password only 2.0.1 allows (longer than 20) is refused when 1.6 is asked for.
    long_one = "a-password-of-thirty-characters"[:30]
    assert csms("password", "hash", "--version", "ocpp2.0.1", stdin=long_one).returncode == 0
    refused = csms("password", "hash", "--version", "ocpp1.6", stdin=long_one)
    assert refused.returncode == 2 and long_one not in refused.stderr


@pytest.mark.slow  # several CLI processes, a second or more each
def test_password_hash_of_an_authorization_key() -> None:
    key = "4F43415F4F4354545F61646D696E5F74657374"  # "OCA_OCTT_admin_test"
    made = csms("password", "hash", "--authorization-key", stdin=key + "\n")
    assert made.returncode == 0, made.stderr
    assert verify_password(password_from_authorization_key(key), made.stdout.strip())
    assert verify_password("OCA_OCTT_admin_test", made.stdout.strip())
    assert csms("password", "hash", "--authorization-key", stdin="XYZ").returncode == 2


def test_settings_errors_never_echo_a_password() -> None:
    result = csms(
        "station",
        "add",
        "CS1",
        CSMS_STATIONS='[{"station_id": "CS1", "password_hash": "my-clear-password-1"}]',
    )
    assert result.returncode == 2
    assert "stations.0.password_hash" in result.stderr
    assert "my-clear-password-1" not in result.stderr + result.stdout


@pytest.mark.slow  # several CLI processes, a second or more each
def test_station_commands_say_what_they_need() -> None:
    added = csms("station", "add", "CS1", "--profile", "1", "--generate-password")
    assert added.returncode != 0 and "--redis-url" in added.stderr
    rotated = csms("station", "rotate-password", "CS1", CSMS_REDIS_URL="redis://127.0.0.1:1/0")
    assert rotated.returncode == 2
    assert "--broker-url" in rotated.stderr and "--redis-url" in rotated.stderr
