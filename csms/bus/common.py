"""What both MQTT adapters share: the broker address, reason codes, reconnect backoff, TLS,
client ids and the log line of a failed connection, so the two behave and read alike."""

from __future__ import annotations

import os
import random
import socket
import ssl
import uuid
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import structlog

__all__ = [
    "AUTH_REFUSALS",
    "NO_MATCHING_SUBSCRIBERS",
    "BrokerAddress",
    "backoff_delay",
    "default_client_id",
    "log_connect_failure",
    "tls_context",
]


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where and how to reach the broker, parsed from ``mqtt://`` / ``mqtts://`` URLs."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"broker URL must start with mqtt:// or mqtts://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r} has no host")
        tls = parts.scheme in ("mqtts", "ssl")
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
        )


AUTH_REFUSALS = frozenset({4, 5, 134, 135})
"""CONNACK codes for refused credentials: MQTT 3.1.1 (4, 5) and v5 (0x86, 0x87)."""

NO_MATCHING_SUBSCRIBERS = 16
"""MQTT v5 PUBACK reason code 0x10: the broker accepted the message and nobody receives it."""


def backoff_delay(attempt: int, max_backoff: float) -> float:
    """Seconds to wait before reconnect ``attempt`` (1, 2, ...): exponential from 0.2 s,
    capped at ``max_backoff``, with jitter so a fleet cut off together does not come back
    in lock step."""
    return float(min(max_backoff, 0.1 * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.0))


def tls_context(
    address: BrokerAddress,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
) -> ssl.SSLContext | None:
    """The client TLS context of an ``mqtts://`` address (None for plain ``mqtt://``)."""
    if not address.tls:
        return None
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def default_client_id(prefix: str) -> str:
    """A client id unique to this process: ``{prefix}-{host}-{pid}-{random}``."""
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def log_connect_failure(
    log: structlog.typing.FilteringBoundLogger,
    address: BrokerAddress,
    error: str,
    *,
    refused_credentials: bool,
    delay: float,
    attempt: int,
) -> None:
    """One warning per failed or lost connection; refused credentials say what to fix
    (never the password)."""
    if refused_credentials:
        log.warning(
            "broker refused the credentials",
            error=error,
            broker=address.host,
            port=address.port,
            user=address.username,
            hint="put the broker's user name and password in broker_url, "
            "mqtt://user:password@host:1883"
            if address.username is None
            else "check the user name and password in broker_url",
            retry_in=round(delay, 2),
            attempt=attempt,
        )
    else:
        log.warning(
            "broker connection lost", error=error, retry_in=round(delay, 2), attempt=attempt
        )
