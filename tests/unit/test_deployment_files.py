"""compose.yaml and the Dockerfile cannot run here (no Docker engine), so check what can be
checked: it parses, has the expected services, names real CLI commands and real settings."""

from __future__ import annotations

import asyncio
import fnmatch
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import build_parser
from csms.config import Settings
from csms.probes import MetricSet, ProbeServer
from tests.timing import timeout

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
    """Every package the project installs (pyproject's package list) is in the image."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        pattern.rstrip("*")
        for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    assert {"api", "cli", "csms", "operations"} <= set(packages)
    for package in packages:
        assert f"COPY {package} {package}" in dockerfile
    assert 'ENTRYPOINT ["csms"]' in dockerfile


def _shipped_texts() -> dict[str, str]:
    """Every file an operator deploys or reads for deployment."""
    paths = [ROOT / "compose.yaml", ROOT / "Dockerfile", ROOT / "README.md"]
    paths += sorted((ROOT / "deploy").iterdir()) + sorted((ROOT / "docs").glob("*.md"))
    return {str(path.relative_to(ROOT)): path.read_text() for path in paths if path.is_file()}


def test_no_default_mqtt_password_anywhere() -> None:
    texts = _shipped_texts()
    for name, text in texts.items():
        assert "change-me" not in text, name
        assert "MQTT_PASSWORD:-" not in text, name  # a ${VAR:-default} fallback
    compose = texts["compose.yaml"]
    # Every use of MQTT_PASSWORD that compose interpolates refuses to start without it.
    # ($${...} is escaped: the container's shell expands it, from that environment.)
    interpolated = re.findall(r"(?<!\$)\$\{MQTT_PASSWORD([^}]*)\}", compose)
    assert len(interpolated) >= 2
    assert all(rest.startswith(":?") for rest in interpolated), interpolated
    services = _compose()["services"]
    assert services["mosquitto"]["environment"]["MQTT_PASSWORD"].startswith("${MQTT_PASSWORD:?")


def test_compose_refuses_unknown_stations_by_default() -> None:
    services = _compose()["services"]
    for name in ("gateway", "manager"):
        assert services[name]["environment"]["CSMS_UNKNOWN_STATIONS"] == "reject"
    assert Settings(unknown_stations="reject").unknown_stations == "reject"


def test_compose_services_restart_and_have_health_checks() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) >= 2, name
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name in ("gateway", "manager"):
        depends = services[name]["depends_on"]
        assert set(depends) == {"mosquitto", "redis"}, name
        assert all(dep["condition"] == "service_healthy" for dep in depends.values()), name


def test_compose_python_health_checks_compile_and_probe_readiness() -> None:
    services = _compose()["services"]
    for name in ("gateway", "manager", "api"):
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        compile(test[3], f"{name} healthcheck", "exec")
    gateway = services["gateway"]
    args = build_parser().parse_args(gateway["command"])
    assert f"{args.listen_port}:{args.listen_port}" in gateway["ports"]
    for name in ("gateway", "manager"):
        service = services[name]
        # The probe port the role is configured with, read as the process reads it.
        setting = f"{name}_metrics_port"
        configured = service["environment"][f"CSMS_{setting.upper()}"]
        probe_port = getattr(Settings.model_validate({setting: configured}), setting)
        assert probe_port == Settings.model_fields[setting].default, name
        assert f"'http://127.0.0.1:{probe_port}/ready'" in service["healthcheck"]["test"][3]
        assert str(probe_port) in service["expose"], name
        # Probes need no key: they stay inside the compose network.
        assert not any(str(probe_port) in str(item) for item in service.get("ports", [])), name
    api = services["api"]
    port = api["environment"]["CSMS_API_PORT"]
    assert f"127.0.0.1:{port}/v1/ready" in api["healthcheck"]["test"][3]
    assert f"{port}:{port}" in api["ports"] and api["command"] == ["api"]


@pytest.mark.parametrize("name", ["gateway", "manager"])
async def test_compose_health_checks_pass_on_ready_and_fail_on_not_ready(name: str) -> None:
    """The health check command itself, run against a real probe server: exit 0 while
    /ready says 200, non-zero on 503 (compose marks the container unhealthy)."""
    service = _compose()["services"][name]
    command = service["healthcheck"]["test"][3]
    default = Settings.model_fields[f"{name}_metrics_port"].default
    state = {"ready": True}

    async def check() -> bool:
        return state["ready"]

    registry = MetricSet().registry
    async with ProbeServer("127.0.0.1", 0, registry=registry, checks={"bus": check}) as probes:
        local = command.replace(f":{default}/", f":{probes.port}/")
        assert local != command
        codes = []
        for ready in (True, False):
            state["ready"] = ready
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", local, stderr=asyncio.subprocess.DEVNULL
            )
            codes.append(await asyncio.wait_for(process.wait(), timeout(30)))
    assert codes[0] == 0 and codes[1] != 0


def test_compose_redis_keeps_an_append_only_file_on_a_volume() -> None:
    compose = _compose()
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] in ("everysec", "always")
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data"
    assert volume in compose["volumes"]


def test_broker_config_sets_tcp_nodelay() -> None:
    lines = [
        line.split("#", 1)[0].split()
        for line in (ROOT / "deploy" / "mosquitto.conf").read_text().splitlines()
    ]
    assert ["set_tcp_nodelay", "true"] in lines
    assert ["persistence", "false"] in lines  # clean sessions: nothing to keep


def test_dockerignore_keeps_the_context_small_and_the_build_inputs_in() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "tests", ".mypy_cache", ".pytest_cache"} <= patterns
    assert "**/__pycache__" in patterns
    copied = [
        part
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for part in line.split()[1:-1]
    ]
    assert "pyproject.toml" in copied and "csms" in copied
    for source in copied:
        ignored_by = [p for p in patterns if fnmatch.fnmatch(source, p.removeprefix("**/"))]
        assert not ignored_by, f"the Dockerfile copies {source} but .dockerignore has {ignored_by}"
