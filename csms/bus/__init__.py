"""The transport between gateways and managers.

:class:`Bus` is the one interface both sides use. Two adapters implement it:

- :mod:`csms.bus.mqtt`: MQTT v5 over aiomqtt (production; Mosquitto, EMQX, ...).
- :mod:`csms.bus.memory`: an in-process broker with the same semantics, shared
  subscriptions included (embedded default and unit tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol


class BusUnavailable(Exception):
    """The bus cannot take the message now (broker down, publish timed out)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message received from the bus."""

    topic: str
    payload: bytes
    properties: Mapping[str, str] = field(default_factory=dict)
    """MQTT v5 user properties (trace context, metadata)."""


class Bus(Protocol):
    """A publish/subscribe connection. One per process, shared by everything in it."""

    @property
    def connected(self) -> bool:
        """True while publishes can be expected to succeed."""
        ...

    async def publish(
        self, topic: str, payload: bytes, *, properties: Mapping[str, str] | None = None
    ) -> None:
        """Publish at QoS 1. Raises :class:`BusUnavailable` promptly when it cannot."""
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
