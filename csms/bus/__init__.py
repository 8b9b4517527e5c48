"""The transport between gateways and managers.

:class:`Bus` is the one interface both sides use. Three adapters implement it:

- :mod:`csms.bus.mqtt5_bus`: MQTT v5 as a thin asyncio protocol over the ``mqtt5`` codec
  (the default for a broker; Mosquitto, EMQX, ...).
- :mod:`csms.bus.mqtt`: MQTT v5 over aiomqtt / paho (``bus_client = "paho"``).
- :mod:`csms.bus.memory`: an in-process broker with the same semantics, shared
  subscriptions included (embedded default and unit tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote

from csms.errors import Unavailable

__all__ = [
    "Bus",
    "BusUnavailable",
    "Message",
    "NoSubscribers",
    "property_text",
]

_PROPERTY_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")
"""Kept as is in MQTT properties: printable ASCII but ``%``."""


def property_text(text: str) -> str:
    """``text`` percent-encoded (UTF-8) into printable ASCII, reversible with
    :func:`urllib.parse.unquote`; ids such as ``CP-1`` or ``BootNotification`` are unchanged.
    Lone surrogates, which UTF-8 cannot encode, are encoded as their code units.

    Every MQTT user property a process publishes goes through this: a broker drops the
    connection of a client that sends a string MQTT v5 forbids (control characters,
    noncharacters), which would cut off everything that process serves.
    """
    if text.isascii() and text.isprintable() and "%" not in text and " " not in text:
        return text
    return quote(text, safe=_PROPERTY_SAFE, errors="surrogatepass")


class BusUnavailable(Unavailable):
    """The bus cannot take the message now (broker down, publish timed out)."""


class NoSubscribers(BusUnavailable):
    """The broker took the message but nobody subscribes to its topic right now (MQTT v5
    PUBACK reason code 16), so nobody will receive it.

    For a station Call this means no manager is subscribed (e.g. just after a broker
    restart); for a CSMS call it means no gateway holds the station: both deserve a prompt
    answer instead of silence.
    """


@dataclass(frozen=True, slots=True)
class Message:
    """One message received from the bus."""

    topic: str
    payload: bytes
    properties: Mapping[str, str] = field(default_factory=dict)
    """MQTT v5 user properties (trace context, metadata)."""
    acknowledge: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    """Set when the bus delivers with manual acknowledgement: call once the message has been
    handled (see :meth:`ack`)."""

    def ack(self) -> None:
        """Tell the broker this message is handled (a no-op for buses that ack on receipt).

        A consumer that acknowledges only after handling lets a broker that redelivers
        unacknowledged messages (a resumed session, EMQX's shared-subscription redispatch)
        give the work to someone else when this process dies half way.
        """
        if self.acknowledge is not None:
            self.acknowledge()


class Bus(Protocol):
    """A publish/subscribe connection. One per process, shared by everything in it."""

    @property
    def connected(self) -> bool:
        """True while publishes can be expected to succeed."""
        ...

    @property
    def session_id(self) -> str:
        """Changes each time the connection to the broker is made again: a gateway learns
        from it that the broker published its last will (its stations went offline) and
        announces them again; the will names the session it belongs to."""
        ...

    async def publish(
        self, topic: str, payload: bytes, *, properties: Mapping[str, str] | None = None
    ) -> None:
        """Publish at QoS 1. Raises :class:`BusUnavailable` promptly when it cannot, and
        :class:`NoSubscribers` when the broker says nobody will receive it."""
        ...

    async def subscribe(self, topic_filter: str) -> None:
        """Subscribe (kept across reconnects until :meth:`unsubscribe`)."""
        ...

    async def unsubscribe(self, topic_filter: str) -> None: ...

    def messages(self) -> AsyncIterator[Message]:
        """Messages for this connection's subscriptions; one consumer per bus."""
        ...

    async def __aenter__(self) -> Bus: ...

    async def __aexit__(self, *exc_info: object) -> None: ...
