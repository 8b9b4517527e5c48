"""Real TLS handshakes on loopback: websockets server on :func:`gateway.tls.server_ssl_context`.

Needs no broker or store: only loopback sockets and certificates made by :mod:`tests.certs`.

asyncio's server side closes a failed TLS handshake without flushing the alert, so a client
only sees EOF or a reset. The *reason* a handshake was refused is read on the server side:
with the loop in debug mode asyncio logs the ``SSLError`` of every failed handshake (the
:func:`handshake_errors` fixture collects them).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import InvalidMessage, InvalidStatus
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from csms.credentials import hash_password
from gateway.admission import CertificateIdentity, ListenerPolicy, admit, parse_basic_auth
from gateway.tls import CertificateReloader, peer_identity, server_ssl_context
from services.models import StationRecord
from tests.certs import CertFiles, Pki, client_context, make_pki

STATION = "CS001"
SUBPROTOCOLS = [Subprotocol("ocpp2.0.1"), Subprotocol("ocpp1.6")]
TLS_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]

Handler = Callable[[ServerConnection], Awaitable[None]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), station_ids=[STATION, "CS002"])


@pytest.fixture
async def handshake_errors(
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[list[ssl.SSLError]]:
    """SSL errors of failed server-side handshakes, as asyncio logs them in debug mode."""
    asyncio.get_running_loop().set_debug(True)
    caplog.set_level(logging.DEBUG, logger="asyncio")
    errors: list[ssl.SSLError] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            exc = record.exc_info[1] if record.exc_info else None
            if isinstance(exc, ssl.SSLError) and exc not in errors:
                errors.append(exc)

    handler = Collect()
    logging.getLogger("asyncio").addHandler(handler)
    yield errors
    logging.getLogger("asyncio").removeHandler(handler)


class Station:
    """What the server's handler saw of each accepted connection."""

    def __init__(self) -> None:
        self.identities: list[CertificateIdentity | None] = []
        self.subprotocols: list[str | None] = []

    async def handler(self, connection: ServerConnection) -> None:
        ssl_object = connection.transport.get_extra_info("ssl_object")
        self.identities.append(peer_identity(ssl_object))
        self.subprotocols.append(connection.subprotocol)
        async for message in connection:
            await connection.send(message)  # echo


async def _serve(
    context: ssl.SSLContext,
    handler: Handler,
    process_request: Callable[[ServerConnection, Request], Response | None] | None = None,
) -> Server:
    return await serve(
        handler,
        "127.0.0.1",
        0,
        ssl=context,
        subprotocols=SUBPROTOCOLS,
        process_request=process_request,
    )


@pytest.fixture
async def station() -> Station:
    return Station()


def _url(server: Server, station_id: str = STATION) -> str:
    port = server.sockets[0].getsockname()[1]
    return f"wss://localhost:{port}/ocpp/{station_id}"


def _client(pki: Pki, cert: CertFiles | None, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = client_context(pki, cert)
    context.minimum_version = context.maximum_version = version
    return context


async def _open(
    url: str, context: ssl.SSLContext, additional_headers: dict[str, str] | None = None
) -> ClientConnection:
    return await connect(
        url,
        ssl=context,
        subprotocols=SUBPROTOCOLS,
        open_timeout=5,
        additional_headers=additional_headers,
    )


async def _wait_for(errors: list[ssl.SSLError], count: int = 1) -> None:
    for _ in range(200):
        if len(errors) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} handshake error(s), got {errors}")


def _serial(cert: CertFiles) -> int:
    return x509.load_pem_x509_certificate(cert.cert.read_bytes()).serial_number


def _peer_serial(connection: ClientConnection) -> int:
    peer = connection.transport.get_extra_info("peercert")
    assert peer is not None
    return int(peer["serialNumber"], 16)


# -- profile 3: client certificates --------------------------------------------------------


@pytest.fixture
async def profile3_server(pki: Pki, station: Station) -> AsyncIterator[Server]:
    context = server_ssl_context(
        pki.server.cert, pki.server.key, client_ca_files=[pki.ca.cert], require_client_cert=True
    )
    async with await _serve(context, station.handler) as server:
        yield server


@pytest.mark.parametrize("tls_version", TLS_VERSIONS, ids=lambda v: v.name)
async def test_profile3_accepts_station_certificate_and_extracts_identity(
    pki: Pki, station: Station, profile3_server: Server, tls_version: ssl.TLSVersion
) -> None:
    client = _client(pki, pki.client(STATION), tls_version)
    async with await _open(_url(profile3_server), client) as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
        assert ws.subprotocol == "ocpp2.0.1"
        tls = ws.transport.get_extra_info("ssl_object")
        assert tls.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[tls_version.name]
    assert station.identities == [
        CertificateIdentity(common_name=STATION, san_dns=(), verified=True)
    ]
    identity = station.identities[0]
    assert identity is not None
    record = StationRecord(station_id=STATION, security_profile=3)
    listener = ListenerPolicy(frozenset({3}), tls=True)
    assert admit(STATION, "ocpp2.0.1", listener, record, certificate=identity).accepted
    assert not admit("CS002", "ocpp2.0.1", listener, record, certificate=identity).accepted


async def test_profile3_identity_includes_san_dns_names(
    pki: Pki, station: Station, profile3_server: Server
) -> None:
    cert = pki.issue_client("device-7", san_dns=["CS007", "cs007.example"], name="client-san")
    async with await _open(_url(profile3_server, "CS007"), client_context(pki, cert)) as ws:
        await ws.send("x")
        await ws.recv()
    assert station.identities == [
        CertificateIdentity("device-7", san_dns=("CS007", "cs007.example"), verified=True)
    ]


@pytest.mark.parametrize("tls_version", TLS_VERSIONS, ids=lambda v: v.name)
@pytest.mark.parametrize(
    ("which", "failure"),
    [
        ("foreign", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
        ("none", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
    ],
)
async def test_profile3_refuses_bad_or_missing_certificate(
    pki: Pki,
    station: Station,
    profile3_server: Server,
    handshake_errors: list[ssl.SSLError],
    which: str,
    failure: str,
    tls_version: ssl.TLSVersion,
) -> None:
    cert = {"foreign": pki.foreign, "expired": pki.expired, "none": None}[which]
    client = _client(pki, cert, tls_version)
    with pytest.raises((InvalidMessage, OSError)):
        async with await _open(_url(profile3_server), client) as ws:
            await ws.recv()
    await _wait_for(handshake_errors)
    error = handshake_errors[0]
    assert failure in f"{error.reason} {getattr(error, 'verify_message', '')}"
    assert station.identities == []  # the handler never ran


# -- profiles 2 and 3 on one listener ------------------------------------------------------


@pytest.fixture
async def mixed_server(pki: Pki, station: Station) -> AsyncIterator[Server]:
    context = server_ssl_context(
        pki.server.cert, pki.server.key, client_ca_files=[pki.ca.cert], require_client_cert=False
    )
    assert context.verify_mode == ssl.CERT_OPTIONAL
    async with await _serve(context, station.handler) as server:
        yield server


async def test_mixed_listener_admits_profile2_station_without_certificate(
    pki: Pki, station: Station, mixed_server: Server
) -> None:
    async with await _open(_url(mixed_server), client_context(pki)) as ws:
        await ws.send("x")
        await ws.recv()
    async with await _open(_url(mixed_server), client_context(pki, pki.client(STATION))) as ws:
        await ws.send("x")
        await ws.recv()
    assert station.identities == [None, CertificateIdentity(STATION, verified=True)]


async def test_mixed_listener_still_verifies_a_presented_certificate(
    pki: Pki, station: Station, mixed_server: Server, handshake_errors: list[ssl.SSLError]
) -> None:
    with pytest.raises((InvalidMessage, OSError)):
        async with await _open(_url(mixed_server), client_context(pki, pki.foreign)) as ws:
            await ws.recv()
    await _wait_for(handshake_errors)
    assert "unable to get local issuer certificate" in str(handshake_errors[0])
    assert station.identities == []


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_server_refuses_tls_below_1_2(
    pki: Pki, mixed_server: Server, handshake_errors: list[ssl.SSLError]
) -> None:
    client = client_context(pki)
    client.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    client.maximum_version = ssl.TLSVersion.TLSv1_1
    client.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises((InvalidMessage, OSError)):
        async with await _open(_url(mixed_server), client) as ws:
            await ws.recv()
    await _wait_for(handshake_errors)
    assert handshake_errors[0].reason == "UNSUPPORTED_PROTOCOL"


# -- admission in process_request: Basic auth over TLS and certificates together ----------


@pytest.fixture
async def admitting_server(pki: Pki, station: Station) -> AsyncIterator[Server]:
    """A {2,3} listener deciding in process_request, as the gateway will."""
    records = {
        STATION: StationRecord(
            station_id=STATION, security_profile=2, password_hash=hash_password("a" * 20)
        ),
        "CS002": StationRecord(station_id="CS002", security_profile=3),
    }
    listener = ListenerPolicy(frozenset({2, 3}), tls=True)

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        station_id = request.path.rsplit("/", 1)[-1]
        decision = admit(
            station_id,
            "ocpp2.0.1",
            listener,
            records.get(station_id),
            credentials=parse_basic_auth(request.headers.get("Authorization")),
            certificate=peer_identity(connection.transport.get_extra_info("ssl_object")),
        )
        if decision.accepted:
            return None
        response = connection.respond(decision.http_status, decision.reason + "\n")
        for name, value in decision.headers:
            response.headers[name] = value
        return response

    context = server_ssl_context(pki.server.cert, pki.server.key, client_ca_files=[pki.ca.cert])
    async with await _serve(context, station.handler, process_request) as server:
        yield server


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_admission_over_real_handshakes(pki: Pki, admitting_server: Server) -> None:
    url = _url(admitting_server)
    async with await _open(url, client_context(pki), additional_headers=_basic(STATION, "a" * 20)):
        pass

    with pytest.raises(InvalidStatus) as refused:
        await _open(url, client_context(pki), additional_headers=_basic(STATION, "b" * 20))
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"].startswith('Basic realm="OCPP"')
    assert b"wrong password" in refused.value.response.body

    cs002 = _url(admitting_server, "CS002")
    async with await _open(cs002, client_context(pki, pki.client("CS002"))):
        pass
    with pytest.raises(InvalidStatus) as refused:  # CS001's certificate on CS002's URL
        await _open(cs002, client_context(pki, pki.client(STATION)))
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as refused:  # profile-3 station trying Basic
        await _open(cs002, client_context(pki), additional_headers=_basic("CS002", "a" * 20))
    assert refused.value.response.status_code == 403
    assert b"downgrade" in refused.value.response.body
    with pytest.raises(InvalidStatus) as refused:
        await _open(_url(admitting_server, "CS999"), client_context(pki))
    assert refused.value.response.status_code == 404


# -- hot reload of the server certificate -------------------------------------------------


async def test_reload_swaps_certificate_for_new_connections_only(pki: Pki, tmp_path: Path) -> None:
    live = CertFiles(tmp_path / "live.pem", tmp_path / "live.key")
    shutil.copy(pki.server.cert, live.cert)
    shutil.copy(pki.server.key, live.key)
    context = server_ssl_context(live.cert, live.key, client_ca_files=[pki.ca.cert])
    reloader = CertificateReloader(context, live.cert, live.key, client_ca_files=[pki.ca.cert])
    station = Station()
    old_serial = _serial(pki.server)
    renewed = pki.issue_server("server-renewed")

    async with await _serve(context, station.handler) as server:
        url = _url(server)
        async with await _open(url, client_context(pki)) as first:
            assert _peer_serial(first) == old_serial
            assert not reloader.reload_if_changed()  # nothing changed yet

            # Renew the way deployment tools do: write new files, rename over the old ones.
            for source, target in ((renewed.cert, live.cert), (renewed.key, live.key)):
                shutil.copy(source, target.with_suffix(".tmp"))
                os.replace(target.with_suffix(".tmp"), target)
            assert reloader.changed()
            assert reloader.reload_if_changed()
            assert reloader.context is context  # the same object the server holds

            async with await _open(url, client_context(pki)) as second:
                assert _peer_serial(second) == _serial(renewed)
                await second.send("new")
                assert await second.recv() == "new"

            # The station connected before the reload is untouched.
            await first.send("still here")
            assert await first.recv() == "still here"
            assert _peer_serial(first) == old_serial


async def test_failed_reload_keeps_the_previous_certificate(pki: Pki, tmp_path: Path) -> None:
    live = CertFiles(tmp_path / "live.pem", tmp_path / "live.key")
    shutil.copy(pki.server.cert, live.cert)
    shutil.copy(pki.server.key, live.key)
    context = server_ssl_context(live.cert, live.key)
    reloader = CertificateReloader(context, live.cert, live.key)
    other = pki.issue_server("server-other")
    station = Station()

    async with await _serve(context, station.handler) as server:
        # A renewed certificate whose key has not been written yet: a mismatched pair.
        shutil.copy(other.cert, live.cert)
        with pytest.raises(ssl.SSLError):
            reloader.reload()
        assert not reloader.reload_if_changed()  # logged, not raised
        assert not reloader.changed()  # and not retried until the files change again
        live.key.write_text("not a key")
        assert not reloader.reload_if_changed()

        async with await _open(_url(server), client_context(pki)) as ws:
            assert _peer_serial(ws) == _serial(pki.server)

        # Once both files are consistent the reload goes through.
        shutil.copy(other.key, live.key)
        assert reloader.reload_if_changed()
        async with await _open(_url(server), client_context(pki)) as ws:
            assert _peer_serial(ws) == _serial(other)


async def test_reloader_run_polls(pki: Pki, tmp_path: Path) -> None:
    live = CertFiles(tmp_path / "live.pem", tmp_path / "live.key")
    shutil.copy(pki.server.cert, live.cert)
    shutil.copy(pki.server.key, live.key)
    context = server_ssl_context(live.cert, live.key)
    reloader = CertificateReloader(context, live.cert, live.key)
    renewed = pki.issue_server("server-polled")
    task = asyncio.create_task(reloader.run(interval=0.01))
    try:
        shutil.copy(renewed.key, live.key)
        shutil.copy(renewed.cert, live.cert)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if not reloader.changed():
                break
        station = Station()
        async with (
            await _serve(context, station.handler) as server,
            await _open(_url(server), client_context(pki)) as ws,
        ):
            assert _peer_serial(ws) == _serial(renewed)
    finally:
        task.cancel()


def test_require_client_cert_needs_cas(pki: Pki) -> None:
    with pytest.raises(ValueError, match="client_ca_files"):
        server_ssl_context(pki.server.cert, pki.server.key, require_client_cert=True)


def test_context_settings(pki: Pki) -> None:
    context = server_ssl_context(pki.server.cert, pki.server.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    names = {cipher["name"] for cipher in context.get_ciphers() if cipher["protocol"] == "TLSv1.2"}
    assert {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"} <= names
    assert all("GCM" in name or "CHACHA20" in name for name in names)


def test_peer_identity_without_peer() -> None:
    assert peer_identity(None) is None
