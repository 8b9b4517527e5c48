"""compose.yaml and the Dockerfile cannot run here (no Docker engine), so check what can be
checked: it parses, has the expected services, names real CLI commands and real settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from csms.cli import build_parser
from csms.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_has_the_fleet() -> None:
    services = _compose()["services"]
    assert {"mosquitto", "redis", "gateway", "manager"} <= set(services)
    assert services["manager"]["deploy"]["replicas"] >= 2
    assert "9000:9000" in services["gateway"]["ports"]


def test_compose_commands_are_real_cli_commands() -> None:
    services = _compose()["services"]
    parser = build_parser()
    for name in ("gateway", "manager"):
        args = parser.parse_args(services[name]["command"])
        assert args.command == name


def test_compose_environment_names_real_settings() -> None:
    services = _compose()["services"]
    fields = set(Settings.model_fields)
    for name in ("gateway", "manager"):
        for key, value in services[name]["environment"].items():
            assert key.startswith("CSMS_")
            assert key.removeprefix("CSMS_").lower() in fields, key
            assert value
    env = services["manager"]["environment"]
    assert env["CSMS_BROKER_URL"].startswith("mqtt://csms:")  # broker requires credentials
    assert env["CSMS_REDIS_URL"].startswith("redis://redis:")


def test_broker_config_refuses_anonymous_clients() -> None:
    conf = (ROOT / "deploy" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf
    assert "password_file" in conf


def test_dockerfile_copies_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("csms", "gateway", "manager", "services", "ocpp_schemas"):
        assert f"COPY {package} {package}" in dockerfile
    assert 'ENTRYPOINT ["csms"]' in dockerfile
