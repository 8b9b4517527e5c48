"""Private Mosquitto and Redis instances for integration tests.

Each test session starts its own broker and Redis from the installed binaries, on free
ports, so tests can stop and restart them (fault tests) without touching shared services.
Where a binary is missing but a Docker engine answers, testcontainers provides the server;
where neither is available the run fails with a message saying what to install. Nothing is
skipped silently.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.timing import timeout as scaled

INSTALL_HINT = (
    "Integration tests need a real {what}. Install the '{binary}' binary "
    "(Debian/Ubuntu: apt-get install {package}) or run a Docker engine for testcontainers."
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts connections on ``port`` (``timeout`` is scaled by
    ``CSMS_TEST_TIMEOUT_FACTOR``)."""
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {limit}s")


@dataclass
class ServerProcess:
    """A server binary we started; can be stopped and started again on the same port."""

    name: str
    argv: list[str]
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        log = (self.workdir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            self.argv, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(self.port)
        except RuntimeError:
            self.stop()
            output = (self.workdir / f"{self.name}.log").read_text(errors="replace")
            raise RuntimeError(f"{self.name} did not start:\n{output[-2000:]}") from None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(scaled(5))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(scaled(5))
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        result = subprocess.run(
            ["docker", "info"], capture_output=True, timeout=scaled(5), check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@contextlib.contextmanager
def mosquitto_server() -> Iterator[tuple[str, ServerProcess | None]]:
    """Yield (mqtt_url, process) of a private MQTT v5 broker."""
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )
    if binary:
        with tempfile.TemporaryDirectory(prefix="csms-mosquitto-") as tmp:
            port = free_port()
            conf = Path(tmp) / "mosquitto.conf"
            conf.write_text(
                f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                "max_queued_messages 100000\nmax_inflight_messages 0\n"
            )
            server = ServerProcess("mosquitto", [binary, "-c", str(conf)], port, Path(tmp))
            server.start()
            try:
                yield f"mqtt://127.0.0.1:{port}", server
            finally:
                server.stop()
        return
    if _docker_available():
        from testcontainers.core.container import DockerContainer

        container = DockerContainer("eclipse-mosquitto:2").with_exposed_ports(1883)
        container.with_command("mosquitto -c /mosquitto-no-auth.conf")
        with container:
            host = container.get_container_host_ip()
            port = int(container.get_exposed_port(1883))
            wait_for_port(port, 30)
            yield f"mqtt://{host}:{port}", None
        return
    raise RuntimeError(
        INSTALL_HINT.format(what="MQTT broker", binary="mosquitto", package="mosquitto")
    )


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, ServerProcess | None]]:
    """Yield (redis_url, process) of a private Redis."""
    if shutil.which("redis-server"):
        with redis_with() as (port, server):
            yield f"redis://127.0.0.1:{port}/0", server
        return
    if _docker_available():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7") as container:
            host = container.get_container_host_ip()
            port = int(container.get_exposed_port(6379))
            yield f"redis://{host}:{port}/0", None
        return
    raise RuntimeError(
        INSTALL_HINT.format(what="Redis", binary="redis-server", package="redis-server")
    )


def _binary(name: str, *candidates: str, package: str, what: str) -> str:
    """Path of a server binary; a clear failure naming what to install when it is missing."""
    found = shutil.which(name) or next((p for p in candidates if Path(p).exists()), None)
    if found is None:
        raise RuntimeError(INSTALL_HINT.format(what=what, binary=name, package=package))
    return found


@contextlib.contextmanager
def mosquitto_with_password(user: str, password: str) -> Iterator[tuple[str, ServerProcess]]:
    """A private broker that refuses anonymous clients (``password_file``, as in
    ``deploy/mosquitto.conf``); yields its URL without credentials and the process."""
    binary = _binary(
        "mosquitto",
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        package="mosquitto",
        what="MQTT broker",
    )
    passwd = _binary(
        "mosquitto_passwd", "/usr/bin/mosquitto_passwd", package="mosquitto", what="MQTT broker"
    )
    with tempfile.TemporaryDirectory(prefix="csms-mosquitto-auth-") as tmp:
        password_file = Path(tmp) / "passwd"
        subprocess.run(
            [passwd, "-b", "-c", str(password_file), user, password],
            check=True,
            capture_output=True,
        )
        password_file.chmod(0o600)
        port = free_port()
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {password_file}\n"
            # Started as root, mosquitto would switch to its own user, who cannot read the
            # private temporary directory; as anyone else this line changes nothing.
            f"persistence false\nuser {getpass.getuser()}\n"
        )
        server = ServerProcess("mosquitto", [binary, "-c", str(conf)], port, Path(tmp))
        server.start()
        try:
            yield f"mqtt://127.0.0.1:{port}", server
        finally:
            server.stop()


@contextlib.contextmanager
def redis_with(*args: str, tls: bool = False) -> Iterator[tuple[int, ServerProcess]]:
    """A private redis-server with extra ``args`` (``--requirepass``, ``--tls-*``...); yields
    its port (the TLS port when ``tls``) and the process."""
    binary = _binary("redis-server", package="redis-server", what="Redis")
    with tempfile.TemporaryDirectory(prefix="csms-redis-auth-") as tmp:
        port = free_port()
        listen = ["--port", "0", "--tls-port", str(port)] if tls else ["--port", str(port)]
        argv = [
            binary,
            *listen,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp,
            *args,
        ]
        server = ServerProcess("redis", argv, port, Path(tmp))
        server.start()
        try:
            yield port, server
        finally:
            server.stop()
