"""Listener settings, first-try mode, TLS-offload header parsing, and the manager's use of how
an unknown station was admitted. No sockets here (see tests/integration/test_security_*)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import structlog
from pydantic import ValidationError
from websockets.datastructures import Headers

from csms.bus.memory import MemoryBroker
from csms.config import ListenerSettings, Settings, TlsOffloadSettings, load_settings
from csms.envelope import ADMITTED_AS
from csms.topics import Topics
from csms.versions import OcppVersion
from gateway.listeners import (
    TlsOffload,
    decide_first_try,
    is_loopback,
    parse_forwarded_certificate,
    station_listeners,
)
from manager.common.registration import boot
from manager.context import CallContext
from operations.call_maker import CallMaker
from services import Services
from services.memory import (
    MemoryIdempotencyStore,
    MemoryStationRegistry,
    MemoryTokenStore,
    MemoryTransactionStore,
)
from services.models import BootInfo
from services.tariff import ConfiguredTariff
from tests.certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), station_ids=["CP3"])


# -- settings ---------------------------------------------------------------------------------


def test_default_is_one_plain_profile_1_listener_and_unknown_stations_refused() -> None:
    settings = Settings(listen_host="127.0.0.2", listen_port=9100)
    assert settings.unknown_stations == "reject"
    assert settings.first_try is None
    [listener] = station_listeners(settings)
    assert (listener.host, listener.port, listener.profiles) == ("127.0.0.2", 9100, [1])
    assert listener.tls is None and listener.offload is None


@pytest.mark.parametrize(
    ("values", "profiles"),
    [
        ({}, [1]),
        ({"tls": {"cert_file": "c", "key_file": "k"}}, [2]),
        ({"tls": {"cert_file": "c", "key_file": "k", "client_ca_files": ["ca"]}}, [2, 3]),
        ({"offload": {"trusted_proxies": ["10.0.0.0/8"]}}, [2, 3]),
        (
            {
                "profiles": [3, 2, 3],
                "tls": {"cert_file": "c", "key_file": "k", "client_ca_files": ["a"]},
            },
            [2, 3],
        ),
        ({"profiles": [1, 3], "offload": {"trusted_proxies": ["10.1.2.3"]}}, [1, 3]),
    ],
)
def test_listener_profiles_default_from_its_kind(
    values: dict[str, Any], profiles: list[int]
) -> None:
    assert ListenerSettings(**values).profiles == profiles


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"profiles": [2]}, "need tls"),
        ({"profiles": [1], "tls": {"cert_file": "c", "key_file": "k"}}, "profile 1 is plain"),
        ({"profiles": [3], "tls": {"cert_file": "c", "key_file": "k"}}, "client_ca_files"),
        ({"profiles": []}, "at least one"),
        ({"profiles": [4]}, "profiles"),
        (
            {
                "tls": {"cert_file": "c", "key_file": "k"},
                "offload": {"trusted_proxies": ["10.0.0.1"]},
            },
            "tls",
        ),
        ({"offload": {"trusted_proxies": []}}, "trusted_proxies"),
        ({"offload": {"trusted_proxies": ["not-an-ip"]}}, "not an IP"),
        ({"offload": {"trusted_proxies": ["::1"], "tls_header": "bad header"}}, "header"),
    ],
)
def test_listener_mistakes_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ListenerSettings(**values)


def test_listeners_from_toml_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "csms.toml"
    config.write_text(
        """
unknown_stations = "pending"
tls_reload_interval = 30

[[listeners]]
host = "0.0.0.0"
port = 9000
profiles = [1]

[[listeners]]
host = "0.0.0.0"
port = 9443
profiles = [2, 3]
[listeners.tls]
cert_file = "/etc/csms/server.pem"
key_file = "/etc/csms/server.key"
client_ca_files = ["/etc/csms/stations-ca.pem"]
"""
    )
    settings = load_settings(str(config))
    assert [(item.port, item.profiles) for item in settings.listeners] == [
        (9000, [1]),
        (9443, [2, 3]),
    ]
    assert settings.listeners[1].tls is not None
    assert settings.unknown_stations == "pending" and settings.tls_reload_interval == 30
    monkeypatch.setenv(
        "CSMS_LISTENERS",
        json.dumps([{"port": 9080, "offload": {"trusted_proxies": ["10.0.0.0/8"]}}]),
    )
    from_env = load_settings()
    assert from_env.listeners[0].offload is not None
    assert from_env.listeners[0].offload.client_cert_header == "X-Forwarded-Client-Cert"


@pytest.mark.parametrize("value", ["accept", "pending", "reject"])
def test_unknown_stations_values(value: str) -> None:
    assert Settings(unknown_stations=value).unknown_stations == value  # type: ignore[arg-type]


def test_unknown_stations_other_values_refused() -> None:
    with pytest.raises(ValidationError, match="unknown_stations"):
        Settings(unknown_stations="maybe")  # type: ignore[arg-type]


# -- first-try mode ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.10", False),
        ("csms.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("values", "embedded", "enabled", "reason"),
    [
        ({}, True, True, "any station may connect without credentials"),
        ({}, False, False, "first-try mode is off"),
        ({"first_try": True}, False, True, "loopback only"),
        ({"first_try": False}, True, False, "first-try mode is off"),
        ({"listen_host": "0.0.0.0"}, True, False, "0.0.0.0:9000, not on loopback only"),
        ({"first_try": True, "listen_host": "0.0.0.0"}, False, False, "not on loopback only"),
        (
            {"listeners": [{"host": "127.0.0.1"}, {"host": "10.0.0.5", "port": 9001}]},
            True,
            False,
            "10.0.0.5:9001",
        ),
    ],
)
def test_first_try_only_on_loopback(
    values: dict[str, Any], embedded: bool, enabled: bool, reason: str
) -> None:
    decision = decide_first_try(Settings(**values), embedded=embedded)
    assert decision.enabled is enabled
    assert reason in decision.reason


# -- TLS offload ------------------------------------------------------------------------------


def _offload(**values: Any) -> TlsOffload:
    return TlsOffload(TlsOffloadSettings(trusted_proxies=["10.0.0.0/8", "fd00::/8"], **values))


@pytest.mark.parametrize(
    ("host", "trusted"),
    [
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),
        ("fd00::1", True),
        ("fe80::1%eth0", False),
        ("11.0.0.1", False),
        ("", False),
        (None, False),
        ("garbage", False),
    ],
)
def test_trusted_proxy_addresses(host: str | None, trusted: bool) -> None:
    assert _offload().trusts(host) is trusted


def test_forwarded_facts(pki: Pki) -> None:
    offload = _offload()
    pem = quote(pki.client("CP3").cert.read_text(), safe="")
    headers = Headers({"X-Forwarded-Proto": "https", "X-Forwarded-Client-Cert": pem})
    facts = offload.inspect("10.0.0.9", headers)
    assert facts.trusted and facts.tls and facts.certificate is not None
    assert facts.certificate.common_name == "CP3" and facts.certificate.verified
    # The same headers from elsewhere: ignored, and said so.
    facts = offload.inspect("192.0.2.1", headers)
    assert (facts.trusted, facts.tls, facts.certificate) == (False, False, None)
    assert facts.ignored == ("X-Forwarded-Proto", "X-Forwarded-Client-Cert")
    # A trusted proxy saying the outside was plain: no certificate is taken.
    plain = Headers({"X-Forwarded-Proto": "http", "X-Forwarded-Client-Cert": pem})
    facts = offload.inspect("10.0.0.9", plain)
    assert facts.trusted and not facts.tls and facts.certificate is None
    # An empty certificate header means none (profile-2 stations behind the proxy).
    empty = Headers({"X-Forwarded-Proto": "https", "X-Forwarded-Client-Cert": ""})
    facts = offload.inspect("10.0.0.9", empty)
    assert facts.tls and facts.certificate is None
    # Two certificate headers are ambiguous: unverified.
    twice = Headers([("X-Forwarded-Proto", "https")] + [("X-Forwarded-Client-Cert", pem)] * 2)
    facts = offload.inspect("10.0.0.9", twice)
    assert facts.certificate is not None and not facts.certificate.verified


def test_forwarded_certificate_validity_is_checked(pki: Pki) -> None:
    offload = _offload()
    pem = quote(pki.client("CP3").cert.read_text(), safe="")
    headers = Headers({"X-Forwarded-Proto": "https", "X-Forwarded-Client-Cert": pem})
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    facts = offload.inspect("10.0.0.9", headers, now=later)
    assert facts.certificate is not None and not facts.certificate.verified
    assert facts.certificate_error is not None and "expired" in facts.certificate_error


@pytest.mark.parametrize(
    "value", ["", "x" * 20_000, "-----BEGIN CERTIFICATE-----%%%-----END CERTIFICATE-----", "AAAA"]
)
def test_bad_forwarded_certificates_raise_value_error(value: str) -> None:
    with pytest.raises(ValueError):
        parse_forwarded_certificate(value)


# -- the manager answers an admitted unknown station as the gateway said ----------------------


def _ctx(settings: Settings, meta: dict[str, str]) -> CallContext:
    services = Services(
        stations=MemoryStationRegistry(),
        tokens=MemoryTokenStore(),
        transactions=MemoryTransactionStore(),
        tariff=ConfiguredTariff(settings.tariff),
        idempotency=MemoryIdempotencyStore(),
    )
    return CallContext(
        station_id="NEW",
        version=OcppVersion.OCPP201,
        message_id="m1",
        action="BootNotification",
        services=services,
        settings=settings,
        calls=CallMaker(MemoryBroker().client(), Topics()),
        log=structlog.get_logger(),
        meta=meta,
    )


@pytest.mark.parametrize(
    ("policy", "meta", "status"),
    [
        ("reject", {}, "Rejected"),
        ("pending", {}, "Pending"),
        ("reject", {ADMITTED_AS: "Accepted"}, "Accepted"),  # first-try mode
        ("accept", {ADMITTED_AS: "Pending"}, "Pending"),  # the gateway's policy wins
        ("pending", {ADMITTED_AS: "Rejected"}, "Pending"),  # only Pending / Accepted count
    ],
)
async def test_unknown_station_boot_follows_its_admission(
    policy: Any, meta: dict[str, str], status: str
) -> None:
    response = await boot(
        _ctx(Settings(unknown_stations=policy), meta), BootInfo(vendor="V", model="M")
    )
    assert response["status"] == status


@pytest.mark.parametrize(
    ("peer", "header_lines", "expected"),
    [
        ("10.0.0.5", ["198.51.100.7"], "198.51.100.7"),
        # The proxy appends what it saw; what the client wrote before it is not believed.
        ("10.0.0.5", ["203.0.113.1, 198.51.100.7"], "198.51.100.7"),
        ("10.0.0.5", ["203.0.113.1", "198.51.100.7"], "198.51.100.7"),
        ("10.0.0.5", ["2001:db8::1"], "2001:db8::1"),
        ("10.0.0.5", ["[2001:db8::1]"], "2001:db8::1"),
        ("10.0.0.5", ["not-an-address"], None),
        ("10.0.0.5", [], None),
        # An untrusted peer's header is ignored altogether.
        ("192.0.2.9", ["198.51.100.7"], None),
    ],
)
def test_forwarded_client_address(peer: str, header_lines: list[str], expected: str | None) -> None:
    offload = TlsOffload(TlsOffloadSettings(trusted_proxies=["10.0.0.0/8"]))
    headers = Headers()
    for line in header_lines:
        headers["X-Forwarded-For"] = line
    assert offload.client_address(peer, headers) == expected
