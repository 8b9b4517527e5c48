"""A real fleet for end-to-end tests: ``csms gateway`` and N ``csms manager`` processes on a
private Mosquitto and Redis, exactly as they run in production (separate processes, one MQTT
connection each, one shared subscription)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers import free_port, wait_for_port
from tests.timing import timeout as scaled

ROOT = Path(__file__).resolve().parents[2]
API_ADMIN_KEY = "fleet-bootstrap-admin-key-0123456789"
"""The admin key ``csms api`` of :meth:`Fleet.start_api` is bootstrapped with."""


@dataclass
class CsmsProcess:
    role: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(scaled(10))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(scaled(5))

    def log_records(self) -> list[dict[str, Any]]:
        """JSON log lines written so far."""
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def wait_for_log(self, event: str, timeout: float = 30.0) -> None:
        """Wait until this process logs ``event`` (``timeout`` is scaled by
        ``CSMS_TEST_TIMEOUT_FACTOR``)."""
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            if any(record.get("event") == event for record in self.log_records()):
                return
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{self.role} did not log {event!r}:\n{tail}")


@dataclass
class Fleet:
    """Gateway + managers sharing one topic prefix on the private broker and Redis."""

    mqtt_url: str
    redis_url: str
    workdir: Path
    managers: int = 2
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[CsmsProcess] = field(default_factory=list)

    @property
    def redis_prefix(self) -> str:
        return "csms:"

    def url(self, station: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp/{station}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CSMS_")}
        env.update(
            {
                "CSMS_BROKER_URL": self.mqtt_url,
                "CSMS_REDIS_URL": self.redis_url,
                "CSMS_TOPIC_PREFIX": self.prefix,
                "CSMS_SHARED_GROUP": f"g{self.prefix}",
                "CSMS_LOG_FORMAT": "json",
                "CSMS_LOG_LEVEL": "debug",
                "CSMS_LISTEN_PORT": str(self.port),
                # Test stations connect without credentials: first-try mode, explicitly
                # enabled (the gateway listens on loopback). Security tests override it.
                "CSMS_FIRST_TRY": "true",
                "CSMS_HEARTBEAT_INTERVAL": "42",
                "CSMS_CALL_TIMEOUT": "5",
                "CSMS_TARIFF__ENERGY_PRICE_PER_KWH": "0.40",
                "CSMS_TARIFF__SESSION_FEE": "1.00",
                "CSMS_TARIFF__CURRENCY": "EUR",
                # Probe servers off unless a test asks for them (on ports of its own): several
                # managers of one fleet would otherwise share the default port.
                "CSMS_GATEWAY_METRICS_PORT": "none",
                "CSMS_MANAGER_METRICS_PORT": "none",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        env = self._env()
        for index in range(self.managers):
            manager = CsmsProcess(
                f"manager-{index}",
                [sys.executable, "-m", "cli", "manager"],
                self.workdir / f"manager-{index}.log",
                env,
            )
            self.processes.append(manager)
            manager.start()
        gateway = CsmsProcess(
            "gateway",
            [sys.executable, "-m", "cli", "gateway"],
            self.workdir / "gateway.log",
            env,
        )
        self.processes.append(gateway)
        gateway.start()
        try:
            wait_for_port(self.port, 30)
            for process in self.processes:
                process.wait_for_log(f"{process.role.split('-')[0]} ready")
        except Exception:
            self.stop()
            raise

    @property
    def manager_processes(self) -> list[CsmsProcess]:
        return [p for p in self.processes if p.role.startswith("manager")]

    @property
    def gateway(self) -> CsmsProcess:
        return next(p for p in self.processes if p.role == "gateway")

    def start_api(self) -> str:
        """Start ``csms api`` on this fleet's stores and bus (admin key :data:`API_ADMIN_KEY`);
        its base URL once it is ready. :meth:`stop` stops it with the rest."""
        port = free_port()
        env = self._env() | {"CSMS_API_PORT": str(port), "CSMS_API_ADMIN_KEY": API_ADMIN_KEY}
        replica = sum(1 for process in self.processes if process.role.startswith("api"))
        api = CsmsProcess(
            f"api-{replica}",
            [sys.executable, "-m", "cli", "api"],
            self.workdir / f"api-{replica}.log",
            env,
        )
        self.processes.append(api)
        api.start()
        wait_for_port(port, 30)
        api.wait_for_log("api ready")
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        for process in self.processes:
            process.stop()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a ``csms`` command against this fleet's stores."""
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            cwd=ROOT,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=scaled(60),
            check=False,
        )


@contextmanager
def fleet_with_api(
    mqtt_url: str, redis_url: str, workdir: Path, **options: Any
) -> Iterator[tuple[Fleet, str]]:
    """A started :class:`Fleet` (``options`` as its fields) plus ``csms api``: (fleet, API URL),
    everything stopped on exit."""
    fleet = Fleet(mqtt_url, redis_url, workdir, **options)
    fleet.start()
    try:
        yield fleet, fleet.start_api()
    finally:
        fleet.stop()
