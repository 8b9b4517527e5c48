"""The one message type that crosses the bus, used by gateway and manager alike.

An :class:`Envelope` carries one OCPP-J frame (or a gateway-made outcome such as a
timeout) between a gateway and the manager fleet. It is self-describing: station,
OCPP version and, for answers to CSMS-initiated calls, the original request. That
last part is what keeps managers stateless: whichever instance receives a result
knows what was asked without having remembered it.

Serialisation is msgspec JSON: fast, strict and typed on decode.
"""

from __future__ import annotations

import enum
import time
from typing import Any

import msgspec

__all__ = [
    "ADMITTED_AS",
    "ConnectionEvent",
    "ConnectionEventKind",
    "Envelope",
    "GatewayPresence",
    "GatewayState",
    "Kind",
    "OriginalCall",
    "decode_envelope",
    "decode_event",
    "decode_presence",
    "encode",
]


class Kind(enum.StrEnum):
    """What an envelope carries."""

    CALL = "call"
    """An OCPP Call (station → CSMS on ``in``, CSMS → station on ``out``)."""
    RESULT = "result"
    """An OCPP CallResult."""
    ERROR = "error"
    """An OCPP CallError sent by the station or the CSMS."""
    TIMEOUT = "timeout"
    """Gateway-made: the station did not answer a CSMS call in time."""
    UNDELIVERED = "undelivered"
    """Gateway-made: a CSMS call could not be sent (queue full, station gone, replaced)."""


class OriginalCall(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The CSMS-initiated call an answer belongs to, attached by the gateway."""

    message_id: str
    action: str
    payload: dict[str, Any]
    meta: dict[str, str] = {}
    """Originator's metadata, returned untouched (e.g. who asked, a correlation key)."""
    sent_at: float | None = None
    """Unix time the gateway wrote the call to the socket (None when never sent)."""


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One OCPP-J message with the facts needed to handle it anywhere in the fleet."""

    kind: Kind
    station: str
    version: str
    """Negotiated subprotocol, e.g. ``ocpp1.6`` or ``ocpp2.0.1``."""
    message_id: str
    action: str | None = None
    """Action name for calls (both directions)."""
    payload: Any = None
    """Call or CallResult payload."""
    error_code: str | None = None
    error_description: str | None = None
    error_details: Any = None
    request: OriginalCall | None = None
    """For answers to CSMS calls: the call being answered."""
    meta: dict[str, str] = {}
    """Free-form metadata (trace ids, originator, correlation); also mirrored to MQTT properties."""
    reply_to: str | None = None
    """For CSMS calls: topic the answer should go to instead of the shared ``in`` topic."""
    gateway: str | None = None
    """Id of the gateway instance holding the station's socket."""
    connection: str | None = None
    """Id of the station connection the message came from (unique per socket)."""
    at: float = 0.0
    """Unix time the envelope was made."""

    def __post_init__(self) -> None:
        if not self.at:
            self.at = time.time()


ADMITTED_AS = "admitted_as"
"""``Envelope.meta`` key set by a gateway on every Call of a station the registry did not know
when it connected (``unknown_stations`` = pending / accept, or first-try mode): the
registration that admission gives it, ``"Pending"`` or ``"Accepted"``. The manager answers
such a station's BootNotification with it, so gateway and manager cannot disagree."""


class ConnectionEventKind(enum.StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


class ConnectionEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Published by a gateway when a station socket opens or closes."""

    kind: ConnectionEventKind
    station: str
    version: str
    gateway: str
    connection: str
    remote: str | None = None
    reason: str | None = None
    session: str | None = None
    """The gateway's bus session the event was published in (see ``GatewayPresence``)."""
    lease: float = 0.0
    """On ``connected``: the gateway's presence lease, in seconds; it holds the station for
    that long even if its first heartbeat is never heard."""
    password_hash: str | None = None
    """On ``connected``: the hash of a rotated password (pending, or of a rotation whose
    answer was lost) the station logged in with. It proves the station uses that password,
    so the registry makes it current."""
    security_profile_reached: int = 0
    """On ``connected``: the station's pending security-profile upgrade, when it
    authenticated at that profile or higher; the registry makes it the registered one."""
    at: float = 0.0

    def __post_init__(self) -> None:
        if not self.at:
            self.at = time.time()


class GatewayState(enum.StrEnum):
    ALIVE = "alive"
    GONE = "gone"


class GatewayPresence(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A gateway's lease on the stations it holds, on ``{prefix}/gateways/{gateway}``.

    ``alive`` is published every ``gateway_heartbeat_interval`` seconds and renews the lease
    for ``lease`` seconds; ``gone`` is published on a clean stop and, as the MQTT last will,
    by the broker when the gateway's connection dies. When the lease runs out or the gateway
    is gone, a manager marks every station still held by that gateway offline.
    """

    state: GatewayState
    gateway: str
    lease: float = 0.0
    """Seconds the gateway's stations count as held without another ``alive``."""
    session: str | None = None
    """The bus session this presence belongs to. A ``gone`` last will only takes offline the
    stations announced in that session: after the gateway reconnects to the broker it
    announces its stations again in a new session, and a will handled late must not undo
    that."""
    stations: int = 0
    at: float = 0.0

    def __post_init__(self) -> None:
        if not self.at:
            self.at = time.time()


_envelope_encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(Envelope)
_event_decoder = msgspec.json.Decoder(ConnectionEvent)
_presence_decoder = msgspec.json.Decoder(GatewayPresence)


def encode(message: Envelope | ConnectionEvent | GatewayPresence) -> bytes:
    """Serialise an envelope or connection event to JSON bytes."""
    return _envelope_encoder.encode(message)


def decode_envelope(data: bytes) -> Envelope:
    """Parse JSON bytes into an :class:`Envelope`; raises ``msgspec.DecodeError`` /
    ``msgspec.ValidationError`` on malformed input."""
    return _envelope_decoder.decode(data)


def decode_event(data: bytes) -> ConnectionEvent:
    """Parse JSON bytes into a :class:`ConnectionEvent`."""
    return _event_decoder.decode(data)


def decode_presence(data: bytes) -> GatewayPresence:
    """Parse JSON bytes into a :class:`GatewayPresence`."""
    return _presence_decoder.decode(data)
