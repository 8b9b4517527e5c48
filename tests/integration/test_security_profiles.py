"""Security profiles end to end on loopback: real TLS handshakes, real WebSocket clients, and
the ``ocpp`` package as the station where a charging session is needed.

Gateway and manager run in this process on the in-process bus (the embedded composition of
``csms run``), with a spy on every topic under the prefix: a refused connection must
publish nothing at all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import websockets
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidMessage, InvalidStatus
from websockets.typing import Subprotocol

from csms.bus import Message
from csms.bus.memory import MemoryBroker, MemoryBus
from csms.config import ListenerSettings, ListenerTlsSettings, Settings, TokenSettings
from csms.credentials import hash_password, verify_password
from csms.envelope import ADMITTED_AS, decode_envelope
from gateway.server import Gateway
from manager.worker import Manager
from services import Services
from services.factory import open_services
from services.interfaces import StoreUnavailable
from services.models import RegistrationStatus, StationRecord
from tests.certs import CertFiles, Pki, client_context, make_pki
from tests.servers import free_port
from tests.timing import timeout

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Secret-password-0123456789"
TOKEN = "TOKEN-0001"
V16 = Subprotocol("ocpp1.6")
V201 = Subprotocol("ocpp2.0.1")
PLAIN, TLS_MIXED, TLS_CERT_ONLY = 0, 1, 2
"""Listener numbers: ws profile 1, wss profiles 2+3, wss profile 3 only."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), station_ids=["CP3", "OTHER"])


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


def security_settings(pki: Pki, **overrides: Any) -> Settings:
    tls = ListenerTlsSettings(
        cert_file=str(pki.server.cert),
        key_file=str(pki.server.key),
        client_ca_files=[str(pki.ca.cert)],
    )
    values: dict[str, Any] = {
        "listeners": [
            ListenerSettings(host="127.0.0.1", port=0, profiles=[1]),
            ListenerSettings(host="127.0.0.1", port=0, profiles=[2, 3], tls=tls),
            ListenerSettings(host="127.0.0.1", port=0, profiles=[3], tls=tls),
        ],
        "tokens": [TokenSettings(id_token=TOKEN)],
        "ping_interval": None,
        "ping_timeout": None,
        "tls_reload_interval": 3600,
    }
    values.update(overrides)
    return Settings(**values)


@dataclasses.dataclass
class Csms:
    """A running embedded CSMS and what it published."""

    gateway: Gateway
    services: Services
    published: list[Message]
    spy: MemoryBus
    """Subscribed to everything under ``prefix``."""
    prefix: str
    markers: dict[str, asyncio.Event]
    """Topics of markers the spy published, set once the recorder has read them."""

    async def register(self, station_id: str, profile: int, **fields: Any) -> None:
        await self.services.stations.put(
            StationRecord(
                station_id=station_id,
                registration=RegistrationStatus.ACCEPTED,
                security_profile=profile,
                **fields,
            )
        )

    def url(self, station_id: str, listener: int = PLAIN) -> str:
        return self.gateway.url_for(station_id, listener)

    async def quiet(self) -> list[Message]:
        """Everything published so far. The in-process broker delivers in publish order, so
        once the recorder has read a marker the spy publishes now, it has read everything
        published before it."""
        topic = f"{self.prefix}/test-marker/{uuid.uuid4().hex}"
        landed = self.markers[topic] = asyncio.Event()
        await self.spy.publish(topic, b"")
        await asyncio.wait_for(landed.wait(), timeout(5))
        return list(self.published)


async def _record(bus: MemoryBus, into: list[Message], markers: dict[str, asyncio.Event]) -> None:
    """Everything published about stations (the gateway's own presence heartbeats and the
    test's markers aside)."""
    async for message in bus.messages():
        if message.topic in markers:
            markers[message.topic].set()
        elif "/gateways/" not in message.topic:
            into.append(message)


@contextlib.asynccontextmanager
async def embedded(settings: Settings, *, first_try: bool = False) -> AsyncIterator[Csms]:
    """Gateway + manager on one in-process broker, plus a spy subscribed to ``cs/#``."""
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(open_services(settings))
        broker = MemoryBroker()
        spy = await stack.enter_async_context(broker.client())
        await spy.subscribe(f"{settings.topic_prefix}/#")
        published: list[Message] = []
        markers: dict[str, asyncio.Event] = {}
        recorder = asyncio.create_task(_record(spy, published, markers))
        stack.callback(recorder.cancel)
        manager_bus = await stack.enter_async_context(broker.client())
        gateway_bus = await stack.enter_async_context(broker.client())
        await stack.enter_async_context(Manager(settings, manager_bus, services))
        gateway = await stack.enter_async_context(
            Gateway(settings, gateway_bus, registry=services.stations, first_try=first_try)
        )
        yield Csms(gateway, services, published, spy, settings.topic_prefix, markers)


@pytest.fixture
async def csms(pki: Pki) -> AsyncIterator[Csms]:
    async with embedded(security_settings(pki)) as running:
        yield running


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def open_ws(
    url: str,
    version: Subprotocol = V201,
    *,
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> ClientConnection:
    return await connect(
        url, subprotocols=[version], additional_headers=headers, ssl=tls, open_timeout=5
    )


async def refused(
    url: str,
    version: Subprotocol = V201,
    *,
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> websockets.http11.Response:
    """The HTTP response of a refused upgrade."""
    with pytest.raises(InvalidStatus) as caught:
        ws = await open_ws(url, version, headers=headers, tls=tls)
        await ws.close()
    return caught.value.response


async def tls_refused(url: str, tls: ssl.SSLContext) -> None:
    """The TLS handshake fails (the station sees EOF or a reset, never an HTTP answer)."""
    with pytest.raises((InvalidMessage, OSError)):
        ws = await open_ws(url, tls=tls)
        await ws.recv()


# -- charging sessions -------------------------------------------------------------------


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def charge_16(ws: ClientConnection, station_id: str) -> str:
    """Boot, authorize, start and stop a transaction; returns the boot status."""
    station = ChargePoint16(station_id, ws, response_timeout=5)
    task = asyncio.create_task(station.start())
    try:
        boot = await station.call(
            call16.BootNotification(charge_point_model="M1", charge_point_vendor="Acme")
        )
        if boot.status != "Accepted":
            return str(boot.status)
        auth = await station.call(call16.Authorize(id_tag=TOKEN))
        assert auth.id_tag_info["status"] == "Accepted"
        start = await station.call(
            call16.StartTransaction(connector_id=1, id_tag=TOKEN, meter_start=0, timestamp=_now())
        )
        assert start.id_tag_info["status"] == "Accepted"
        stop = await station.call(
            call16.StopTransaction(
                meter_stop=2000, timestamp=_now(), transaction_id=start.transaction_id
            )
        )
        assert stop.id_tag_info is None or stop.id_tag_info["status"] == "Accepted"
        return str(boot.status)
    finally:
        task.cancel()


async def charge_201(ws: ClientConnection, station_id: str) -> str:
    """Boot, then a Started / Ended transaction with energy; returns the boot status."""
    station = ChargePoint201(station_id, ws, response_timeout=5)
    task = asyncio.create_task(station.start())
    try:
        boot = await station.call(
            call201.BootNotification(
                charging_station={"model": "M", "vendor_name": "Acme"}, reason="PowerUp"
            )
        )
        if boot.status != "Accepted":
            return str(boot.status)
        tx = f"tx-{station_id}"
        token = {"id_token": TOKEN, "type": "ISO14443"}
        started = await station.call(
            call201.TransactionEvent(
                event_type="Started",
                timestamp=_now(),
                trigger_reason="Authorized",
                seq_no=0,
                transaction_info={"transaction_id": tx},
                id_token=token,
                evse={"id": 1, "connector_id": 1},
            )
        )
        assert started.id_token_info["status"] == "Accepted"
        ended = await station.call(
            call201.TransactionEvent(
                event_type="Ended",
                timestamp=_now(),
                trigger_reason="EVCommunicationLost",
                seq_no=1,
                transaction_info={"transaction_id": tx, "stopped_reason": "EVDisconnected"},
                meter_value=[
                    {
                        "timestamp": _now(),
                        "sampled_value": [
                            {
                                "value": 2.0,
                                "context": "Transaction.End",
                                "measurand": "Energy.Active.Import.Register",
                                "unit_of_measure": {"unit": "kWh"},
                            }
                        ],
                    }
                ],
            )
        )
        assert ended.total_cost is not None
        return str(boot.status)
    finally:
        task.cancel()


# -- each profile connects and charges -----------------------------------------------------


async def test_profile_1_basic_auth_over_ws_charges(csms: Csms, password_hash: str) -> None:
    await csms.register("CP1", 1, password_hash=password_hash)
    async with await open_ws(csms.url("CP1"), V16, headers=basic("CP1", PASSWORD)) as ws:
        assert ws.subprotocol == "ocpp1.6"
        assert await charge_16(ws, "CP1") == "Accepted"


async def test_profile_2_basic_auth_over_tls_charges(
    csms: Csms, pki: Pki, password_hash: str
) -> None:
    await csms.register("CP2", 2, password_hash=password_hash)
    url = csms.url("CP2", TLS_MIXED)
    assert url.startswith("wss://")
    async with await open_ws(url, headers=basic("CP2", PASSWORD), tls=client_context(pki)) as ws:
        assert ws.transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        assert await charge_201(ws, "CP2") == "Accepted"


@pytest.mark.parametrize("listener", [TLS_MIXED, TLS_CERT_ONLY], ids=["mixed", "cert-only"])
async def test_profile_3_client_certificate_charges(csms: Csms, pki: Pki, listener: int) -> None:
    await csms.register("CP3", 3)
    tls = client_context(pki, pki.client("CP3"))
    async with await open_ws(csms.url("CP3", listener), V16, tls=tls) as ws:
        assert await charge_16(ws, "CP3") == "Accepted"


async def test_profile_3_certificate_identity_other_than_station_id(csms: Csms, pki: Pki) -> None:
    """The registry may bind a station to another certificate name (``--certificate-identity``)."""
    await csms.register("CP-BOUND", 3, certificate_identity="OTHER")
    tls = client_context(pki, pki.client("OTHER"))
    async with await open_ws(csms.url("CP-BOUND", TLS_MIXED), tls=tls) as ws:
        assert await charge_201(ws, "CP-BOUND") == "Accepted"
    # ... and the certificate named after the station id no longer fits.
    own = client_context(pki, pki.client("CP-BOUND"))
    response = await refused(csms.url("CP-BOUND", TLS_MIXED), tls=own)
    assert response.status_code == 403


async def test_higher_profile_than_registered_is_accepted(
    csms: Csms, pki: Pki, password_hash: str
) -> None:
    """Moving up (OCPP 2.0.1 A05) works before the operator updates the registry."""
    await csms.register("CP3", 1, password_hash=password_hash)
    tls = client_context(pki, pki.client("CP3"))
    async with await open_ws(csms.url("CP3", TLS_MIXED), tls=tls) as ws:
        assert await charge_201(ws, "CP3") == "Accepted"


# -- refusals: right status, reason logged with the station id, nothing published -----------


async def test_repeated_refusals_are_logged_once_with_a_count(
    csms: Csms, password_hash: str
) -> None:
    await csms.register("CP1", 1, password_hash=password_hash)
    with capture_logs() as logs:
        for _ in range(5):
            response = await refused(csms.url("CP1"), headers=basic("CP1", "guess-000000000000"))
            assert response.status_code == 401
        assert (await refused(csms.url("NOBODY"))).status_code == 404
    refusals = [log for log in logs if log["event"] == "connection refused"]
    # One line for the guessing (the next one, after the log interval, carries the count)
    # and one for the other station: a flood does not flood the logs.
    assert [(log["station"], log["status"]) for log in refusals] == [("CP1", 401), ("NOBODY", 404)]


async def test_saturated_password_checks_answer_503_then_recover(
    csms: Csms, password_hash: str
) -> None:
    await csms.register("CP1", 1, password_hash=password_hash)
    checks = csms.gateway.password_checks
    release = threading.Event()
    # Occupy every waiting place with checks that block until released.
    blockers = [asyncio.create_task(checks.run(release.wait)) for _ in range(checks.max_waiting)]
    await asyncio.sleep(0)
    try:
        response = await refused(csms.url("CP1"), headers=basic("CP1", PASSWORD))
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert await csms.quiet() == []
    finally:
        release.set()
        await asyncio.gather(*blockers)
    async with await open_ws(csms.url("CP1"), headers=basic("CP1", PASSWORD)) as ws:
        assert ws.subprotocol is not None


async def test_wrong_password_is_401_with_challenge(csms: Csms, password_hash: str) -> None:
    await csms.register("CP1", 1, password_hash=password_hash)
    with capture_logs() as logs:
        response = await refused(csms.url("CP1"), headers=basic("CP1", "wrong-password-000000"))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="OCPP", charset="UTF-8"'
    assert b"wrong password" in response.body
    refusal = next(log for log in logs if log["event"] == "connection refused")
    assert refusal["station"] == "CP1" and refusal["status"] == 401
    assert "wrong-password" not in repr(logs)
    # No credentials at all: challenged the same way.
    response = await refused(csms.url("CP1"))
    assert response.status_code == 401 and "WWW-Authenticate" in response.headers
    assert await csms.quiet() == []


async def test_unknown_station_is_404(csms: Csms, pki: Pki) -> None:
    with capture_logs() as logs:
        assert (await refused(csms.url("NOBODY"))).status_code == 404
        response = await refused(
            csms.url("NOBODY", TLS_MIXED),
            headers=basic("NOBODY", "x" * 16),
            tls=client_context(pki),
        )
    assert response.status_code == 404
    assert b"unknown station" in response.body
    assert [log["station"] for log in logs if log["event"] == "connection refused"] == [
        "NOBODY",
        "NOBODY",
    ]
    assert await csms.quiet() == []


async def test_username_other_than_station_id_is_403(csms: Csms, password_hash: str) -> None:
    await csms.register("CP1", 1, password_hash=password_hash)
    await csms.register("CP9", 1, password_hash=password_hash)
    response = await refused(csms.url("CP1"), headers=basic("CP9", PASSWORD))
    assert response.status_code == 403
    assert b"username is not the station id" in response.body
    assert await csms.quiet() == []


async def test_downgrade_profile_2_station_on_plain_ws_is_403(
    csms: Csms, password_hash: str
) -> None:
    await csms.register("CP2", 2, password_hash=password_hash)
    response = await refused(csms.url("CP2"), headers=basic("CP2", PASSWORD))
    assert response.status_code == 403
    assert b"downgrade" in response.body
    # Without credentials it is not challenged: that would invite the password in clear.
    response = await refused(csms.url("CP2"))
    assert response.status_code == 403 and "WWW-Authenticate" not in response.headers
    assert await csms.quiet() == []


async def test_downgrade_profile_3_station_with_basic_auth_is_403(
    csms: Csms, pki: Pki, password_hash: str
) -> None:
    await csms.register("CP3", 3, password_hash=password_hash)
    response = await refused(
        csms.url("CP3", TLS_MIXED), headers=basic("CP3", PASSWORD), tls=client_context(pki)
    )
    assert response.status_code == 403
    assert b"downgrade" in response.body
    assert await csms.quiet() == []


async def test_profile_3_certificate_of_another_station_is_403(csms: Csms, pki: Pki) -> None:
    await csms.register("CP3", 3)
    tls = client_context(pki, pki.client("OTHER"))
    with capture_logs() as logs:
        response = await refused(csms.url("CP3", TLS_MIXED), tls=tls)
    assert response.status_code == 403
    assert b"not issued to this station" in response.body
    assert any(log.get("station") == "CP3" and log.get("status") == 403 for log in logs)
    assert await csms.quiet() == []


async def test_profile_3_without_certificate(csms: Csms, pki: Pki) -> None:
    await csms.register("CP3", 3)
    # On a listener serving profiles 2 and 3 the TLS handshake succeeds, admission says 403.
    response = await refused(csms.url("CP3", TLS_MIXED), tls=client_context(pki))
    assert response.status_code == 403
    assert b"client certificate required" in response.body
    # On a profile-3-only listener the TLS handshake itself fails.
    await tls_refused(csms.url("CP3", TLS_CERT_ONLY), client_context(pki))
    assert await csms.quiet() == []


@pytest.mark.parametrize("listener", [TLS_MIXED, TLS_CERT_ONLY], ids=["mixed", "cert-only"])
@pytest.mark.parametrize("which", ["expired", "foreign"])
async def test_profile_3_expired_or_unknown_ca_certificate_fails_tls(
    csms: Csms, pki: Pki, which: str, listener: int
) -> None:
    """An expired certificate or one from an unknown CA never gets past the TLS handshake."""
    await csms.register("CP3", 3)
    cert = pki.expired if which == "expired" else pki.foreign
    # Both certificates carry the first station id of the PKI: "CP3".
    await tls_refused(csms.url("CP3", listener), client_context(pki, cert))
    assert csms.gateway.connections == {}
    assert await csms.quiet() == []


async def test_plain_connection_to_tls_listener_fails(csms: Csms, password_hash: str) -> None:
    await csms.register("CP1", 1, password_hash=password_hash)
    url = csms.url("CP1", TLS_MIXED).replace("wss://", "ws://")
    with pytest.raises((InvalidMessage, OSError)):
        ws = await open_ws(url, headers=basic("CP1", PASSWORD))
        await ws.recv()
    assert await csms.quiet() == []


async def test_allowed_versions_choose_the_subprotocol(csms: Csms, password_hash: str) -> None:
    await csms.register("CP1", 1, password_hash=password_hash, allowed_versions=["ocpp1.6"])
    async with await connect(
        csms.url("CP1"), subprotocols=[V201, V16], additional_headers=basic("CP1", PASSWORD)
    ) as ws:
        assert ws.subprotocol == "ocpp1.6"
    response = await refused(csms.url("CP1"), V201, headers=basic("CP1", PASSWORD))
    assert response.status_code == 403
    assert b"not allowed" in response.body


async def test_registry_outage_is_503(pki: Pki) -> None:
    class DownRegistry:
        async def get(self, station_id: str) -> StationRecord | None:
            raise StoreUnavailable("Redis is down")

    settings = security_settings(pki, listeners=[ListenerSettings(port=0)])
    broker = MemoryBroker()
    async with (
        broker.client() as bus,
        Gateway(settings, bus, registry=DownRegistry()) as gateway,
    ):
        response = await refused(gateway.url_for("CP1"), headers=basic("CP1", PASSWORD))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "10"


async def test_password_check_does_not_block_the_event_loop(csms: Csms, password_hash: str) -> None:
    """scrypt runs in a thread: a heartbeat keeps flowing while ten stations log in."""
    await csms.register("CP1", 1, password_hash=password_hash)
    for index in range(10):
        await csms.register(f"LOGIN-{index}", 1, password_hash=password_hash)
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def tick() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.005)
            now = loop.time()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        sockets = await asyncio.gather(
            *(
                open_ws(csms.url(f"LOGIN-{i}"), headers=basic(f"LOGIN-{i}", PASSWORD))
                for i in range(10)
            )
        )
    finally:
        ticker.cancel()
    for ws in sockets:
        await ws.close()
    # On the loop, ten scrypt checks would stall it for ten times one check; in threads the
    # loop keeps ticking (measured as time lost in stalls, robust to a busy machine).
    started = time.perf_counter()
    verify_password(PASSWORD, password_hash)
    one_check = time.perf_counter() - started
    stalled = sum(gap for gap in gaps if gap > 0.02)
    assert stalled < 3 * one_check, (stalled, one_check)


# -- unknown stations: pending policy and first-try mode ------------------------------------


async def test_unknown_station_admitted_as_pending(pki: Pki) -> None:
    async with embedded(security_settings(pki, unknown_stations="pending")) as csms:
        async with await open_ws(csms.url("NEWCOMER")) as ws:
            assert await charge_201(ws, "NEWCOMER") == "Pending"
        calls = [decode_envelope(m.payload) for m in await csms.quiet() if "/in/" in m.topic]
        assert calls and all(env.meta[ADMITTED_AS] == "Pending" for env in calls)
        record = await csms.services.stations.get("NEWCOMER")
        assert record is not None and not record.known
        assert record.registration == RegistrationStatus.PENDING
        # It reconnects (Pending stations retry their boot): still admitted as Pending, the
        # record the fleet wrote for it is not a provisioning.
        async with await open_ws(csms.url("NEWCOMER")) as ws:
            assert await charge_201(ws, "NEWCOMER") == "Pending"
        # A registered station still has to authenticate under this policy.
        await csms.register("CP1", 1, password_hash=hash_password(PASSWORD))
        assert (await refused(csms.url("CP1"))).status_code == 401


async def test_first_try_admits_without_credentials_on_loopback(
    pki: Pki, password_hash: str
) -> None:
    settings = security_settings(pki, listeners=[ListenerSettings(host="127.0.0.1", port=0)])
    async with embedded(settings, first_try=True) as csms:
        assert csms.gateway.first_try
        async with await open_ws(csms.url("ANYONE"), V16) as ws:
            assert await charge_16(ws, "ANYONE") == "Accepted"
        # A station registered with a password is not let in without it.
        await csms.register("CP1", 1, password_hash=password_hash)
        assert (await refused(csms.url("CP1"))).status_code == 401


async def test_first_try_is_refused_off_loopback(pki: Pki) -> None:
    settings = security_settings(pki, listeners=[ListenerSettings(host="0.0.0.0", port=0)])
    broker = MemoryBroker()
    with capture_logs() as logs:
        async with broker.client() as bus, Gateway(settings, bus, first_try=True) as gateway:
            assert not gateway.first_try
            assert (await refused(gateway.url_for("ANYONE"))).status_code == 404
    assert any("first-try mode refused" in log["event"] for log in logs)


# -- several listeners, certificate reload --------------------------------------------------


async def test_each_listener_has_its_own_port_and_scheme(csms: Csms) -> None:
    ports = [listener.port for listener in csms.gateway.listeners]
    assert len(set(ports)) == 3 and csms.gateway.port == ports[0]
    assert csms.gateway.url_for("A").startswith(f"ws://127.0.0.1:{ports[0]}/ocpp/")
    assert csms.gateway.url_for("A", TLS_MIXED).startswith(f"wss://127.0.0.1:{ports[1]}/ocpp/")


async def test_certificate_reload_keeps_connected_stations(
    pki: Pki, tmp_path: Path, password_hash: str
) -> None:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(pki.server.cert.read_bytes())
    key.write_bytes(pki.server.key.read_bytes())
    tls = ListenerTlsSettings(cert_file=str(cert), key_file=str(key))
    settings = security_settings(
        pki, listeners=[ListenerSettings(host="127.0.0.1", port=0, profiles=[2], tls=tls)]
    )
    async with embedded(settings) as csms:
        await csms.register("CP2", 2, password_hash=password_hash)
        await csms.register("CP2B", 2, password_hash=password_hash)
        context = client_context(pki)
        first = await open_ws(csms.url("CP2"), headers=basic("CP2", PASSWORD), tls=context)
        renewed = pki.issue_server("renewed")
        await asyncio.sleep(0.01)  # a distinct mtime
        cert.write_bytes(renewed.cert.read_bytes())
        key.write_bytes(renewed.key.read_bytes())
        csms.gateway.reload_certificates()
        async with await open_ws(
            csms.url("CP2B"), headers=basic("CP2B", PASSWORD), tls=context
        ) as second:
            assert _peer_serial(second) == _serial(renewed)
        # The first connection was untouched: it still talks, on the old certificate.
        assert _peer_serial(first) == _serial(pki.server)
        await first.send('[2,"hb","Heartbeat",{}]')
        answer = await asyncio.wait_for(first.recv(), 5)
        assert '"currentTime"' in str(answer)
        await first.close()


def _serial(files: CertFiles) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number


def _peer_serial(ws: ClientConnection) -> int:
    peer = ws.transport.get_extra_info("peercert")
    return int(peer["serialNumber"], 16)


# -- `csms run` says plainly whether first-try mode is on -----------------------------------


def _run_banner(*args: str) -> str:
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "run", "--port", str(port), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "first-try mode" in line:
                break
        return "".join(lines)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
        if "first-try" not in "".join(lines):
            raise AssertionError(f"no first-try line; stderr:\n{stderr[-2000:]}")


def test_csms_run_announces_first_try_on_loopback() -> None:
    banner = _run_banner()
    assert "WARNING: first-try mode: any station may connect without credentials" in banner


def test_csms_run_turns_first_try_off_on_a_public_address() -> None:
    banner = _run_banner("--host", "0.0.0.0")
    assert "first-try mode is off" in banner and "not on loopback only" in banner
    assert "WARNING: first-try mode:" not in banner
