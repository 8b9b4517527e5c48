"""In-process bus: the embedded default and the unit tests' transport.

Semantics follow MQTT v5 as the project relies on them: topic filters with ``+`` and ``#``;
``$share/{group}/filter`` delivers each message to exactly one member of the group
(round-robin); plain subscribers each get a copy. Delivery is in publish order per subscriber.

Routing is a dict lookup: the subscribers of a topic are worked out on its first publish and
kept (:class:`_Route`) until a subscription of any client changes, so a station's messages
cost no filter matching however many stations and filters there are.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping

from csms.bus import BusUnavailable, Message, NoSubscribers
from csms.topics import matches

__all__ = [
    "MemoryBroker",
    "MemoryBus",
]

MAX_ROUTES = 65_536
"""Topics whose subscribers are kept; beyond, the table starts again (a bound, not a cache
policy: a CSMS has a few topics per connected station)."""


class _Route:
    """Who receives a topic: each plain subscriber once, one member of each shared group."""

    __slots__ = ("groups", "plain")

    def __init__(self, plain: tuple[MemoryBus, ...], groups: tuple[tuple[MemoryBus, ...], ...]):
        self.plain = plain
        self.groups = groups


class MemoryBroker:
    """The hub that :class:`MemoryBus` clients connect to."""

    def __init__(self) -> None:
        self._clients: list[MemoryBus] = []
        self._rr = itertools.count()
        self._routes: dict[str, _Route] = {}
        self.available = True
        """Set False to simulate a broker outage (publishes then raise BusUnavailable)."""

    def client(self, max_queued: int = 100_000) -> MemoryBus:
        """A new client connection to this broker."""
        return MemoryBus(self, max_queued)

    @property
    def backlog(self) -> int:
        """Messages delivered to clients and not read by them yet."""
        return sum(client._queue.qsize() for client in self._clients)

    def _attach(self, client: MemoryBus) -> None:
        self._clients.append(client)
        self._routes.clear()

    def _detach(self, client: MemoryBus) -> None:
        if client in self._clients:
            self._clients.remove(client)
        self._routes.clear()

    def _changed(self) -> None:
        """A subscription changed: every topic's subscribers are worked out again."""
        self._routes.clear()

    def _route(self, message: Message) -> bool:
        """Deliver ``message``; False when no subscription matched (nobody got it)."""
        route = self._routes.get(message.topic)
        if route is None:
            route = self._resolve(message.topic)
            if len(self._routes) >= MAX_ROUTES:
                self._routes.clear()
            self._routes[message.topic] = route
        for client in route.plain:
            client._deliver(message)
        for members in route.groups:
            members[next(self._rr) % len(members)]._deliver(message)
        return bool(route.plain or route.groups)

    def _resolve(self, topic: str) -> _Route:
        """The subscribers of ``topic`` now, by matching every client's filters."""
        plain: list[MemoryBus] = []
        groups: dict[tuple[str, str], list[MemoryBus]] = {}
        last_level = topic.rsplit("/", 1)[-1]
        for client in self._clients:
            # Filters are indexed by their last level (a gateway's filter per held station ends
            # with the station id), so this costs the same with ten stations or ten thousand.
            candidates = client._by_last_level.get(last_level, ())
            for topic_filter in itertools.chain(candidates, client._open_ended):
                if not matches(topic_filter, topic):
                    continue
                if topic_filter.startswith("$share/"):
                    group = topic_filter.split("/", 2)[1]
                    groups.setdefault((group, topic_filter), []).append(client)
                elif not plain or plain[-1] is not client:
                    plain.append(client)
        return _Route(tuple(plain), tuple(tuple(members) for members in groups.values()))


class MemoryBus:
    """A client of :class:`MemoryBroker` implementing :class:`csms.bus.Bus`."""

    def __init__(self, broker: MemoryBroker, max_queued: int) -> None:
        self._broker = broker
        self._by_last_level: dict[str, set[str]] = {}
        """Filters whose last level is literal, by that level."""
        self._open_ended: set[str] = set()
        """Filters ending in ``+`` or ``#``."""
        self._queue: asyncio.Queue[Message] = asyncio.Queue(max_queued)

    @property
    def connected(self) -> bool:
        return self._broker.available

    @property
    def session_id(self) -> str:
        return "memory"

    async def __aenter__(self) -> MemoryBus:
        self._broker._attach(self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._broker._detach(self)

    async def publish(
        self, topic: str, payload: bytes, *, properties: Mapping[str, str] | None = None
    ) -> None:
        if not self._broker.available:
            raise BusUnavailable("in-process broker is unavailable")
        if not self._broker._route(Message(topic, payload, dict(properties or {}))):
            raise NoSubscribers(f"no subscriber for {topic}")

    async def subscribe(self, topic_filter: str) -> None:
        self._broker._changed()
        last_level = topic_filter.rsplit("/", 1)[-1]
        if last_level in ("+", "#"):
            self._open_ended.add(topic_filter)
        else:
            self._by_last_level.setdefault(last_level, set()).add(topic_filter)

    async def unsubscribe(self, topic_filter: str) -> None:
        self._broker._changed()
        self._open_ended.discard(topic_filter)
        last_level = topic_filter.rsplit("/", 1)[-1]
        filters = self._by_last_level.get(last_level)
        if filters is not None:
            filters.discard(topic_filter)
            if not filters:
                del self._by_last_level[last_level]

    def _deliver(self, message: Message) -> None:
        # Same outcome as an MQTT client whose incoming queue overflows: the message is
        # dropped for this client. Sized so the embedded default never gets here.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(message)

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            yield await self._queue.get()
