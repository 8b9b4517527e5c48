"""The handshake's one refusal-to-response mapping, and presence's takeover decision."""

from __future__ import annotations

import http
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response
from websockets.server import ServerProtocol

from csms.bus import Message
from csms.bus.memory import MemoryBroker
from csms.envelope import ConnectionEvent, ConnectionEventKind, encode
from csms.topics import Topics
from gateway.admission import Admission
from gateway.connection import Connection
from gateway.handshake import HandshakeRefused, Refusal, parse_station_path, respond
from gateway.presence import REPLACED, Presence


class FakeSocket:
    """Just enough of a ServerConnection for :func:`respond`."""

    def respond(self, status: http.HTTPStatus, text: str) -> Response:
        return ServerProtocol().reject(status, text)


def response_for(refusal: Refusal) -> Response:
    return respond(cast(ServerConnection, FakeSocket()), refusal)


def test_a_refusal_becomes_its_status_reason_and_headers() -> None:
    response = response_for(
        Refusal(
            http.HTTPStatus.SERVICE_UNAVAILABLE, "too many logins at once", (("Retry-After", "5"),)
        )
    )
    assert response.status_code == 503
    assert response.body == b"too many logins at once\n"
    assert response.headers["Retry-After"] == "5"
    assert response.headers["Content-Type"].startswith("text/plain")


def test_an_admission_refusal_keeps_its_challenge() -> None:
    challenge = ("WWW-Authenticate", 'Basic realm="OCPP", charset="UTF-8"')
    admission = Admission(
        accepted=False,
        http_status=http.HTTPStatus.UNAUTHORIZED,
        reason="wrong password",
        profile=1,
        headers=(challenge,),
    )
    response = response_for(Refusal.of(admission))
    assert (response.status_code, response.body) == (401, b"wrong password\n")
    assert response.headers.get_all("WWW-Authenticate") == [challenge[1]]


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/other/CP-1", 404, b"stations connect to /ocpp/{stationId}\n"),
        ("/ocpp/%ff", 400, b"station id is not valid percent-encoded UTF-8\n"),
        ("/ocpp/a%00b", 400, b"station id must not contain control characters\n"),
    ],
)
def test_path_refusals_answer_through_the_same_mapping(path: str, status: int, body: bytes) -> None:
    with pytest.raises(HandshakeRefused) as caught:
        parse_station_path(path, "/ocpp")
    response = response_for(caught.value.refusal)
    assert (response.status_code, response.body) == (status, body)


# -- takeover ------------------------------------------------------------------------------


@dataclass
class Held:
    """The parts of a Connection presence reads to decide a takeover."""

    station: str
    id: str
    connected_at: float
    log: Any = field(default_factory=lambda: structlog.get_logger("test"))


def notice(connection: str, at: float, gateway: str = "gw-2") -> Message:
    event = ConnectionEvent(
        kind=ConnectionEventKind.CONNECTED,
        station="CP-1",
        version="ocpp2.0.1",
        gateway=gateway,
        connection=connection,
        at=at,
    )
    return Message(topic="cs/ctl/CP-1", payload=encode(event))


def presence_holding(*held: Held) -> Presence:
    stations = {item.station: cast(Connection, item) for item in held}
    return Presence(
        MemoryBroker().client(),
        Topics(),
        gateway_id="gw-1",
        stations=stations,
        heartbeat_interval=1.0,
        publish_timeout=1.0,
        log=structlog.get_logger("test"),
    )


def test_a_newer_connection_elsewhere_takes_the_station_over() -> None:
    here = Held("CP-1", "bbb", connected_at=100.0)
    presence = presence_holding(here)
    assert presence.is_control("cs/ctl/CP-1") and not presence.is_control("cs/out/x/CP-1")
    takeover = presence.on_control(notice("aaa", at=101.0))
    assert takeover is not None
    assert takeover.connection is cast(Connection, here)
    assert takeover.reason == f"{REPLACED} on gateway gw-2"


@pytest.mark.parametrize(
    ("connection", "at"),
    [
        ("aaa", 99.0),  # older
        ("aaa", 100.0),  # same time, smaller id: older in the total order
        ("bbb", 101.0),  # this very connection's own notice
    ],
)
def test_an_older_or_own_notice_changes_nothing(connection: str, at: float) -> None:
    presence = presence_holding(Held("CP-1", "bbb", connected_at=100.0))
    assert presence.on_control(notice(connection, at)) is None


def test_a_notice_for_a_station_not_held_here_or_garbage_changes_nothing() -> None:
    presence = presence_holding()
    assert presence.on_control(notice("aaa", at=1.0)) is None
    assert presence.on_control(Message(topic="cs/ctl/CP-1", payload=b"{not json")) is None
