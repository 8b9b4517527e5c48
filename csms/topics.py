"""The MQTT topic scheme, in one place.

``{prefix}/in/{version}/{station}``      station → CSMS (managers read it through a shared group)
``{prefix}/out/{version}/{station}``     CSMS → station (the gateway holding the socket reads it)
``{prefix}/events/{version}/{station}``  connection events (connected / disconnected)
``{prefix}/ctl/{station}``               gateway-to-gateway control (duplicate-connection takeover)
``{prefix}/gateways/{gateway}``          gateway presence: lease heartbeats and last will
``{prefix}/reply/{originator}``          outcomes of CSMS calls for an originator that waits
``{prefix}/state/{kind}/{station}``      state-change events, when ``events_to_mqtt`` is on

Station ids may contain characters that MQTT gives meaning to (``/``, ``+``, ``#``), the NUL
character, or may be empty-looking once split; each station id is therefore percent-encoded
into exactly one topic level, reversibly.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

__all__ = [
    "Topics",
    "decode_station",
    "encode_station",
    "encode_version",
    "matches",
]

# Characters left readable in a topic level. Everything else (notably "/", "+", "#", "%",
# "$" and control characters) is percent-encoded.
_SAFE = "-_.~:@!*'()=,;"


def encode_station(station_id: str) -> str:
    """Encode a station id into one MQTT topic level (reversible)."""
    return quote(station_id, safe=_SAFE)


def decode_station(level: str) -> str:
    """Inverse of :func:`encode_station`."""
    return unquote(level)


def encode_version(version: str) -> str:
    """Topic-safe form of a subprotocol name (``ocpp2.0.1`` has no special characters)."""
    return quote(version, safe=".")


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names for one deployment (prefix and shared group are configurable)."""

    prefix: str = "cs"
    group: str = "manager"

    def inbound(self, version: str, station: str) -> str:
        return f"{self.prefix}/in/{encode_version(version)}/{encode_station(station)}"

    def outbound(self, version: str, station: str) -> str:
        return f"{self.prefix}/out/{encode_version(version)}/{encode_station(station)}"

    def outbound_any_version(self, station: str) -> str:
        """Filter a gateway subscribes to while it holds ``station``."""
        return f"{self.prefix}/out/+/{encode_station(station)}"

    def event(self, version: str, station: str) -> str:
        return f"{self.prefix}/events/{encode_version(version)}/{encode_station(station)}"

    def control(self, station: str) -> str:
        return f"{self.prefix}/ctl/{encode_station(station)}"

    def reply(self, originator: str) -> str:
        """Where the gateway publishes the outcomes of an originator's calls (``reply_to``)."""
        return f"{self.prefix}/reply/{encode_station(originator)}"

    def state(self, kind: str, station: str) -> str:
        """Where a station's state-change event of ``kind`` (``station.booted``, ...) is
        published for MQTT consumers."""
        return f"{self.prefix}/state/{kind}/{encode_station(station)}"

    def gateway_presence(self, gateway: str) -> str:
        return f"{self.prefix}/gateways/{encode_station(gateway)}"

    def shared_gateway_presence(self) -> str:
        """Shared-subscription filter the manager fleet reads gateway presence from."""
        return f"$share/{self.group}/{self.prefix}/gateways/+"

    def shared_inbound(self) -> str:
        """Shared-subscription filter the manager fleet reads station traffic from."""
        return f"$share/{self.group}/{self.prefix}/in/#"

    def shared_events(self) -> str:
        """Shared-subscription filter the manager fleet reads connection events from."""
        return f"$share/{self.group}/{self.prefix}/events/#"

    def parse(self, topic: str) -> tuple[str, str, str]:
        """Split ``{prefix}/{direction}/{version}/{station}`` into (direction, version, station).

        Raises ``ValueError`` for topics outside the scheme.
        """
        head = self.prefix + "/"
        if not topic.startswith(head):
            raise ValueError(f"topic {topic!r} is not under prefix {self.prefix!r}")
        parts = topic[len(head) :].split("/")
        if len(parts) != 3:
            raise ValueError(f"topic {topic!r} does not have direction/version/station levels")
        direction, version, station = parts
        return direction, unquote(version), decode_station(station)


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic-filter matching (``+`` one level, ``#`` the rest), without ``$share``.

    Used by the in-process bus; MQTT brokers do this themselves.
    """
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2]
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)
