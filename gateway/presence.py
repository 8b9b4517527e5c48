"""Presence: telling the managers and the other gateways which stations this gateway holds.

A gateway is the only process that knows a socket is open, so it announces what it holds and
keeps the announcements true through broker outages, restarts and freezes:

- **Connected / disconnected.** A connected notice goes first to ``{prefix}/ctl/{station}``
  (other gateways close an older socket of the station: newest wins), then to the events
  topic (the registry marks the station online). A disconnect event follows the socket's end.
  Receivers order notices by connection time, so repeating one is always safe.
- **Lost events are published again.** A notice or event the bus would not take (broker
  down) is kept and published once the bus is back; without that, a station that connected
  here during an outage would stay held by a stale socket elsewhere, and the registry would
  not know it is online (or, for a lost disconnect, that it has gone).
- **Duplicate connections.** :meth:`Presence.on_control` reads the other gateways' connected
  notices: a newer connection for a station held here means a :class:`Takeover`. A
  connection is older than another when its ``(connected_at, connection id)`` is smaller;
  every gateway applies the same total order, so exactly one socket keeps a station even
  when two gateways accept it at nearly the same time (with clock skew between gateways the
  survivor may be the slightly older one; never both, never neither). The control filter
  ``{prefix}/ctl/+`` is one subscription made at start-up instead of one more subscribe /
  unsubscribe round trip per station connection; notices are only published when a station
  connects, which is rare next to the station traffic itself.
- **The lease.** ``alive`` on ``{prefix}/gateways/{gateway}`` every heartbeat interval renews
  a lease of :data:`LEASE_FACTOR` intervals on this gateway's stations. The bus connection's
  last will (:func:`presence_will`) and a clean stop (:meth:`Presence.say_gone`) publish
  ``gone``. When the bus session changed (the broker lost this gateway and published its
  will) or the lease lapsed (the process was frozen), every held station is announced again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping

import msgspec
import structlog

from csms.bus import Bus, BusUnavailable, Message
from csms.envelope import (
    ConnectionEvent,
    ConnectionEventKind,
    GatewayPresence,
    GatewayState,
    decode_event,
    encode,
)
from csms.topics import Topics
from gateway.connection import Connection

__all__ = [
    "BUS_WATCH_INTERVAL",
    "LEASE_FACTOR",
    "MAX_LOST_EVENTS",
    "REPLACED",
    "Presence",
    "Takeover",
    "presence_will",
]

LEASE_FACTOR = 3
"""A gateway's presence lease lasts this many heartbeat intervals."""
BUS_WATCH_INTERVAL = 1.0
"""Seconds between two retries of connection events the bus did not take."""
MAX_LOST_EVENTS = 50_000
"""Disconnect events kept for a retry during a broker outage; the oldest go first."""
REPLACED = "replaced by a newer connection"


def presence_will(topics: Topics, gateway_id: str) -> Callable[[str], tuple[str, bytes]]:
    """The MQTT last will of a gateway's bus connection: "gone", naming the bus session, so
    the managers take its stations offline when the broker loses the gateway."""

    def will(session: str) -> tuple[str, bytes]:
        presence = GatewayPresence(state=GatewayState.GONE, gateway=gateway_id, session=session)
        return topics.gateway_presence(gateway_id), encode(presence)

    return will


@dataclasses.dataclass(frozen=True, slots=True)
class Takeover:
    """A newer connection on another gateway holds ``connection``'s station now."""

    connection: Connection
    reason: str


class Presence:
    """The announcements of one gateway (see the module docstring).

    ``stations`` is the gateway's table (station id → the connection holding it here), read
    to know what to announce again; the gateway alone changes it.
    """

    def __init__(
        self,
        bus: Bus,
        topics: Topics,
        *,
        gateway_id: str,
        stations: Mapping[str, Connection],
        heartbeat_interval: float,
        publish_timeout: float,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._bus = bus
        self._topics = topics
        self._id = gateway_id
        self._stations = stations
        self._interval = heartbeat_interval
        self._publish_timeout = publish_timeout
        self._log = log
        self._control_head = f"{topics.prefix}/ctl/"
        self.control_filter = self._control_head + "+"
        """Every gateway's takeover notices; subscribed while the gateway runs."""
        self._unannounced: dict[str, Connection] = {}
        """Connections whose connected notice the bus did not take, by connection id."""
        self._proven_passwords: dict[str, str] = {}
        self._reached_profiles: dict[str, int] = {}
        """Connection id → rotated password hash its station logged in with, until announced."""
        self._lost_events: dict[str, tuple[Connection, ConnectionEvent]] = {}
        """Disconnect events the bus did not take, by connection id, oldest first."""
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def lease(self) -> float:
        """Seconds the managers count this gateway's stations as held without a heartbeat."""
        return self._interval * LEASE_FACTOR

    # -- lifetime ------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to the takeover notices; start the heartbeat and the retries."""
        await self._bus.subscribe(self.control_filter)
        self._tasks = [
            asyncio.create_task(
                self._announce_after_outages(), name=f"gateway:{self._id}:announce"
            ),
            asyncio.create_task(self._keep_presence(), name=f"gateway:{self._id}:presence"),
        ]

    async def stop(self) -> None:
        """Stop the heartbeat and the retries; unsubscribe from the takeover notices."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            await self._bus.unsubscribe(self.control_filter)

    async def say_gone(self) -> None:
        """A clean stop: the stations' disconnect events are out; release the lease."""
        presence = GatewayPresence(
            state=GatewayState.GONE, gateway=self._id, session=self._bus.session_id
        )
        try:
            async with asyncio.timeout(self._publish_timeout):
                await self._bus.publish(self._topics.gateway_presence(self._id), encode(presence))
        except (BusUnavailable, TimeoutError) as exc:
            self._log.debug("gone notice not published", error=str(exc) or "timeout")

    # -- connections ---------------------------------------------------------------------

    async def connected(
        self,
        conn: Connection,
        proven_password_hash: str | None = None,
        reached_security_profile: int = 0,
    ) -> None:
        """``conn`` holds its station now. ``proven_password_hash`` is the rotated password
        its station logged in with, ``reached_security_profile`` the pending profile upgrade
        it authenticated at: both passed on to the registry with the connected event."""
        if proven_password_hash is not None:
            self._proven_passwords[conn.id] = proven_password_hash
        if reached_security_profile:
            self._reached_profiles[conn.id] = reached_security_profile
        await self._announce(conn)

    async def disconnected(self, conn: Connection, reason: str, remote: str | None) -> None:
        """``conn``'s socket is closed and its outcomes are published."""
        event = ConnectionEvent(
            kind=ConnectionEventKind.DISCONNECTED,
            station=conn.station,
            version=conn.version,
            gateway=self._id,
            connection=conn.id,
            remote=remote,
            reason=reason,
            session=self._bus.session_id,
        )
        self._proven_passwords.pop(conn.id, None)
        self._reached_profiles.pop(conn.id, None)
        if self._unannounced.pop(conn.id, None) is not None:
            return  # nobody learned it was connected: nothing to take back
        topic = self._topics.event(conn.version, conn.station)
        if not await self._publish_quietly(conn, topic, event):
            self._lost_events[conn.id] = (conn, event)
            while len(self._lost_events) > MAX_LOST_EVENTS:
                dropped = next(iter(self._lost_events))
                del self._lost_events[dropped]
                self._log.warning("disconnect event dropped: too many waiting", connection=dropped)

    def is_control(self, topic: str) -> bool:
        """True for a takeover notice (a topic under :attr:`control_filter`)."""
        return topic.startswith(self._control_head)

    def on_control(self, message: Message) -> Takeover | None:
        """Another gateway's connected notice: the takeover it means here, if any."""
        try:
            notice = decode_event(message.payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._log.warning("undecodable control message dropped", error=str(exc))
            return None
        conn = self._stations.get(notice.station)
        if conn is None or conn.id == notice.connection:
            return None
        if (conn.connected_at, conn.id) >= (notice.at, notice.connection):
            conn.log.info(
                "takeover notice of an older connection ignored",
                other_gateway=notice.gateway,
                other_connection=notice.connection,
            )
            return None
        return Takeover(conn, f"{REPLACED} on gateway {notice.gateway}")

    # -- announcing ----------------------------------------------------------------------

    async def _announce(self, conn: Connection) -> None:
        """Tell other gateways (takeover) and the managers (registry) that ``conn`` holds its
        station. Safe to repeat: receivers order notices by connection time. A notice the bus
        would not take is retried once the bus is back (:meth:`_announce_after_outages`)."""
        notice = ConnectionEvent(
            kind=ConnectionEventKind.CONNECTED,
            station=conn.station,
            version=conn.version,
            gateway=self._id,
            connection=conn.id,
            remote=conn.remote,
            session=self._bus.session_id,
            lease=self.lease,
            at=conn.connected_at,
        )
        sent = await self._publish_quietly(conn, self._topics.control(conn.station), notice)
        if sent:
            proven = self._proven_passwords.get(conn.id)
            if proven is not None:
                notice = msgspec.structs.replace(notice, password_hash=proven)
            reached = self._reached_profiles.get(conn.id)
            if reached:
                notice = msgspec.structs.replace(notice, security_profile_reached=reached)
            sent = await self._publish_quietly(
                conn, self._topics.event(conn.version, conn.station), notice
            )
        if sent:
            self._unannounced.pop(conn.id, None)
            self._proven_passwords.pop(conn.id, None)
            self._reached_profiles.pop(conn.id, None)
        else:
            self._unannounced[conn.id] = conn

    async def _announce_after_outages(self) -> None:
        """Publish again the connection events lost while the bus was down."""
        while True:
            await asyncio.sleep(BUS_WATCH_INTERVAL)
            if not (self._unannounced or self._lost_events) or not self._bus.connected:
                continue
            lost = list(self._lost_events.values())
            self._lost_events.clear()
            for conn, event in lost:
                topic = self._topics.event(event.version, event.station)
                if not await self._publish_quietly(conn, topic, event):
                    self._lost_events[conn.id] = (conn, event)
            pending = list(self._unannounced.values())
            self._unannounced.clear()
            held = [c for c in pending if self._stations.get(c.station) is c and not c.state.ended]
            if held:
                self._log.info("bus back: announcing stations", stations=len(held))
            for conn in held:
                await self._announce(conn)

    async def _keep_presence(self) -> None:
        """Renew this gateway's lease on its stations every heartbeat interval.

        Every held station is announced again (by the path that retries notices lost in a
        broker outage) when the managers may have taken them offline: the bus session
        changed (the broker lost this gateway and published its last will), or the lease
        ran out before it could be renewed (this process was frozen, or the broker
        unreachable without noticing).
        """
        lease = self.lease
        topic = self._topics.gateway_presence(self._id)
        session = self._bus.session_id
        renewed = time.monotonic()  # nothing announced yet can have lapsed
        while True:
            if self._bus.connected:
                lapsed = time.monotonic() - renewed > lease
                if self._bus.session_id != session or lapsed:
                    session = self._bus.session_id
                    self._announce_all_again()
                presence = GatewayPresence(
                    state=GatewayState.ALIVE,
                    gateway=self._id,
                    lease=lease,
                    stations=len(self._stations),
                    session=session,
                )
                try:
                    async with asyncio.timeout(self._publish_timeout):
                        await self._bus.publish(topic, encode(presence))
                    renewed = time.monotonic()
                except BusUnavailable as exc:
                    # NoSubscribers: no manager yet; the lease is renewed next time.
                    self._log.debug("presence not published", error=str(exc))
                except TimeoutError:
                    self._log.debug("presence not published", error="timeout")
            await asyncio.sleep(self._interval)

    def _announce_all_again(self) -> None:
        held = [conn for conn in self._stations.values() if not conn.state.ended]
        for conn in held:
            self._unannounced[conn.id] = conn
        if held:
            self._log.info("announcing stations again after losing the lease", stations=len(held))

    async def _publish_quietly(self, conn: Connection, topic: str, event: ConnectionEvent) -> bool:
        try:
            async with asyncio.timeout(self._publish_timeout):
                await self._bus.publish(
                    topic,
                    encode(event),
                    properties={"station": event.station, "event": str(event.kind)},
                )
            return True
        except (BusUnavailable, TimeoutError) as exc:
            conn.log.warning(
                "connection event not published",
                event_kind=str(event.kind),
                error=str(exc) or "timeout",
            )
            return False
        except Exception:
            conn.log.exception("connection event not published", event_kind=str(event.kind))
            return False
