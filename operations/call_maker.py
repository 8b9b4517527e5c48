"""CallMaker: how handlers and operations send CSMS-initiated calls.

A call is published on the station's ``out`` topic. The gateway holding the socket sends it
when the station has no other CSMS call in flight, and publishes the station's answer (or a
timeout / undelivered outcome) back on the shared ``in`` topic with this call attached. So the
answer reaches *some* manager instance, whose result handler for the action sees the original
request and its ``meta``: no instance needs to remember what it sent.

``reply_to`` lets an originator that waits for the answer itself (the operator API) ask the
gateway to publish the outcome on a topic of its own instead.

A maker made with ``rules`` refuses, before anything is published, a call the station's action
rules deny (:class:`~services.action_rules.ActionDenied`): the calls the managers send on
their own (CostUpdated, CertificateSigned, renewal triggers) are held to the same rules as the
operator's.
"""

from __future__ import annotations

import uuid
from typing import Any

from csms.bus import Bus, property_text
from csms.envelope import Envelope, Kind, encode
from csms.topics import Topics
from ocpp_schemas import Direction, validate
from services.action_rules import ActionRuleReader, check_csms_call

__all__ = [
    "CallMaker",
]


class CallMaker:
    """Sends CSMS-initiated calls to stations through the bus."""

    def __init__(
        self,
        bus: Bus,
        topics: Topics,
        *,
        origin: str = "manager",
        rules: ActionRuleReader | None = None,
    ) -> None:
        self._bus = bus
        self._topics = topics
        self._origin = origin
        self._rules = rules

    @property
    def bus(self) -> Bus:
        """The bus the calls go out on (the managers publish state-change events on it)."""
        return self._bus

    async def call(
        self,
        station_id: str,
        version: str,
        action: str,
        payload: dict[str, Any],
        *,
        meta: dict[str, str] | None = None,
        reply_to: str | None = None,
        message_id: str | None = None,
    ) -> str:
        """Send ``action`` to the station; returns the OCPP message id used.

        The payload is validated against the action's request schema first, so a bug in the
        caller is an exception here rather than a CallError from the station.
        Raises :class:`~services.action_rules.ActionDenied` (the station's action rules
        refuse it: nothing is sent), ``ocpp_schemas.SchemaViolation``, ``KeyError`` (unknown
        action), ``csms.bus.NoSubscribers`` (no gateway holds the station) or
        ``csms.bus.BusUnavailable``.
        """
        if self._rules is not None:
            await check_csms_call(self._rules, station_id, version, action)
        validate(version, action, Direction.REQUEST, payload)
        message_id = message_id or str(uuid.uuid4())
        envelope = Envelope(
            kind=Kind.CALL,
            station=station_id,
            version=version,
            message_id=message_id,
            action=action,
            payload=payload,
            meta={"origin": self._origin, **(meta or {})},
            reply_to=reply_to,
        )
        await self._bus.publish(
            self._topics.outbound(version, station_id),
            encode(envelope),
            properties={"action": property_text(action), "message_id": message_id},
        )
        return message_id
