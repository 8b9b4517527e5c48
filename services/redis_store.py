"""Redis stores: the shared state of a manager fleet.

Every record is one key holding msgspec JSON. Writes that depend on what is stored (a boot,
a connect, a disconnect, a transaction update) are optimistic transactions: WATCH the key,
read it, decide with the same pure rules as the in-memory stores (:mod:`services.rules`),
then MULTI/EXEC; a concurrent writer makes EXEC fail and the attempt is redone on fresh data,
so two managers never lose each other's update. Counters and the idempotency claims are
single Lua scripts.

Key layout (``{p}`` is the prefix, ids are percent-encoded so ``:`` in a station id cannot
make two keys collide)::

    {p}station:{station}              StationRecord
    {p}seen:{station}                 last-seen time (fixed-width UTC text), see touch()
    {p}connectors:{station}           hash "{evse}:{connector}" -> ConnectorStatus
    {p}token:{id_token}               TokenRecord
    {p}gw-stations:{gateway}          set of station ids the gateway was last recorded holding
    {p}gateways                       sorted set gateway -> Unix time its lease runs out
    {p}tx:{station}:{transaction}     Transaction (bounded size: no readings, no seqNos)
    {p}tx-readings:{station}:{transaction}  list of EnergyReading, in arrival order
    {p}tx-seqnos:{station}:{transaction}    set of the 2.0.1 seqNos applied
    {p}tx-active:{station}            set of transaction ids not ended
    {p}tx-token:{id_token}            set of "{station}:{transaction}" not ended
    {p}tx-seq                         last 1.6 transactionId handed out
    {p}idem:{key}                     b"P" + owner while claimed, b"A" + answer once done

Read-side indexes (listings for operators). All are sorted sets with every score 0, read
with ZRANGEBYLEX / ZREVRANGEBYLEX, so order is the members' byte order and a page costs
O(log n + page)::

    {p}stations                       every station id (raw UTF-8)
    {p}stations-online:{registration} ids of stations online with that registration
    {p}stations-offline:{registration}  ... offline (registration: Accepted, Pending, Rejected)
    {p}tokens                         every idToken (raw UTF-8)
    {p}tx-by-start                    sort key of every transaction (below)
    {p}tx-by-station:{station}        sort keys of the station's transactions
    {p}tx-by-token:{id_token}         sort keys of the transactions with that idToken
    {p}tx-by-state:{state}            sort keys of the transactions in that state (Active, Ended)

A transaction's sort key is ``{start ms, 13 digits}:{station}:{transaction}``
(:func:`services.rules.transaction_key`; its tail names the ``tx:`` key), so the reversed
lexicographic order is newest first and a cursor is one key. 1.6 pointer records
(``merged_into``) are not indexed. The station buckets make ``online`` and ``registration``
filters, and their ZCARDs the dashboard counts, exact. A transaction listing reads the index
of its most selective filter (station, then token, then state, else all), time bounds being
key ranges; other filters are checked on the records, at most :data:`LIST_SCAN_LIMIT` per
call (a short page with a cursor when that runs out). Active transactions of a station or
token come from ``tx-active`` / ``tx-token``, which hold only a few.

Every index is changed in the same MULTI/EXEC as the record it describes, from the record
read under WATCH, so concurrent managers keep them exactly consistent; an update that
changes none of the indexed facts (a reading, a charging state) queues nothing more.
:func:`rebuild_indexes` builds them for records written before they existed.

A transaction update costs the same whatever the length of the session: the record carries
the running aggregate of its readings (:class:`~services.models.MeterSummary`), new readings
are RPUSHed to ``tx-readings`` and the event's seqNo SADDed to ``tx-seqnos`` in the same
MULTI/EXEC as the record (both are only written with it, so WATCHing the record covers
them). ``tx-seqnos`` is read (SISMEMBER) only for a seqNo not above the record's
``last_seq_no``, ``tx-readings`` (LRANGE) only for a reading not later than every stored one,
which rebuilds the aggregate, and for :meth:`RedisTransactionStore.readings`. Records
written by earlier versions kept readings and seqNos inside: they are read as before and
moved to these keys on their next update.

Any Redis or socket error is raised as :class:`~services.interfaces.StoreUnavailable`. The
client must be created with ``decode_responses=False`` (values are bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, WatchError

from services import energy, rules
from services.interfaces import StoreUnavailable
from services.models import (
    MAX_PAGE_SIZE,
    Authorization,
    BootInfo,
    ConnectorStatus,
    EnergyReading,
    EventUpdate,
    Page,
    RegistrationStatus,
    StationCounts,
    StationCredentials,
    StationRecord,
    TokenRecord,
    Transaction,
    TransactionChange,
    TransactionState,
)

__all__ = [
    "DEFAULT_PREFIX",
    "LIST_SCAN_LIMIT",
    "MAX_ATTEMPTS",
    "IndexRebuild",
    "RedisIdempotencyStore",
    "RedisStationRegistry",
    "RedisTokenStore",
    "RedisTransactionStore",
    "describe",
    "encode_id",
    "rebuild_indexes",
]

DEFAULT_PREFIX = "csms:"
MAX_ATTEMPTS = 100
"""Optimistic attempts before a write under contention gives up (StoreUnavailable)."""
LIST_SCAN_LIMIT = 2000
"""Index entries a transaction listing examines at most when its filters are not all answered
by the index it reads (a station and a token, or one of them and Ended)."""

_R = TypeVar("_R")
_Write = Callable[[Pipeline], None]

_encoder = msgspec.json.Encoder()
_station_decoder = msgspec.json.Decoder(StationRecord)
_connector_decoder = msgspec.json.Decoder(ConnectorStatus)
_token_decoder = msgspec.json.Decoder(TokenRecord)
_tx_decoder = msgspec.json.Decoder(Transaction)
_reading_decoder = msgspec.json.Decoder(EnergyReading)


class _InRecord(msgspec.Struct):
    """What records written by earlier versions kept inside the transaction record."""

    readings: list[EnergyReading] = []
    seq_nos: list[int] = []


_in_record_decoder = msgspec.json.Decoder(_InRecord)
_IN_RECORD_MARKS = (b'"readings":', b'"seq_nos":')
"""Keys only such a record has (JSON escapes a quote inside a string, so no value matches)."""


def _in_record(raw: bytes) -> _InRecord | None:
    """The readings and seqNos inside an old-shape record; None for a record of today's."""
    if not any(mark in raw for mark in _IN_RECORD_MARKS):
        return None
    return _in_record_decoder.decode(raw)


def encode_id(value: str) -> str:
    """Percent-encode an id for use inside a key (reversible; no ``:`` survives)."""
    return rules.encode_id(value)


def describe(client: aioredis.Redis) -> str:
    """Where ``client`` points, for error messages (never the password)."""
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"Redis at unix:{kwargs['path']}"
    host, port, db = kwargs.get("host", "localhost"), kwargs.get("port", 6379), kwargs.get("db", 0)
    return f"Redis at {host}:{port}/{db}"


@contextlib.contextmanager
def _guard(client: aioredis.Redis, what: str) -> Iterator[None]:
    """Turn any Redis or socket failure during ``what`` into StoreUnavailable."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"{describe(client)} unavailable ({what}): {exc}") from exc


def _multi(pipe: Pipeline) -> None:
    pipe.multi()  # type: ignore[no-untyped-call]  # untyped in redis-py


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _id_range(query: rules.IdQuery) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds of the ids ``query`` admits (after its cursor, with its prefix)."""
    prefix = query.prefix.encode()
    if query.after is not None and query.after >= query.prefix:
        low = b"(" + query.after.encode()
    else:
        low = b"[" + prefix if prefix else b"-"
    # No UTF-8 text contains the byte 0xFF: every id with the prefix sorts below this.
    high = b"(" + prefix + b"\xff" if prefix else b"+"
    return low, high


def _key_range(query: rules.TransactionQuery) -> tuple[bytes, bytes]:
    """ZREVRANGEBYLEX bounds (max, min) of the sort keys in ``query``'s range."""
    high = b"(" + query.upper.encode() if query.upper is not None else b"+"
    low = b"[" + query.lower.encode() if query.lower is not None else b"-"
    return high, low


class _RedisStore:
    """Common plumbing: the client, the prefix, the optimistic write loop."""

    def __init__(self, client: aioredis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("Redis stores need a client with decode_responses=False")
        self.client = client
        self.prefix = prefix

    def _guard(self, what: str) -> contextlib.AbstractContextManager[None]:
        return _guard(self.client, what)

    async def _optimistic(
        self,
        key: str,
        attempt: Callable[[bytes | None], tuple[_R, _Write | None]],
        what: str,
    ) -> _R:
        """WATCH ``key``, read it, let ``attempt`` decide (result, writes or None), MULTI/EXEC.

        Retried on a concurrent change of ``key`` with a short jittered pause.
        """
        with self._guard(what):
            for attempt_no in range(MAX_ATTEMPTS):
                async with self.client.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(key)
                        result, write = attempt(_as_bytes(await pipe.get(key)))
                        if write is None:
                            return result
                        _multi(pipe)
                        write(pipe)
                        await pipe.execute()
                        return result
                    except WatchError:
                        pass
                if attempt_no >= 2:
                    await asyncio.sleep(random.uniform(0, 0.001 * min(attempt_no, 20)))
        raise StoreUnavailable(
            f"{describe(self.client)}: {what} gave up after {MAX_ATTEMPTS} conflicting writes"
        )


# Move a station's last-seen time forward only (fixed-width UTC ISO strings compare in time
# order as text). One round trip, no WATCH: this runs once for every message a station sends.
_TOUCH = """
local old = redis.call('GET', KEYS[1])
if (not old) or ARGV[1] > old then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


def _fixed_width_utc(at: str) -> str | None:
    """``at`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (so text order is time order), None if unparsable."""
    moment = rules.parse_time(at)
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RedisStationRegistry(_RedisStore):
    """:class:`~services.interfaces.StationRegistry` in Redis.

    The record lives in ``station:{id}``; the last-seen time, written on every station message,
    in its own ``seen:{id}`` key so that write is one command instead of a read-modify-write of
    the whole record. :meth:`get` merges the two.
    """

    def __init__(self, client: aioredis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        super().__init__(client, prefix)
        self._touch = client.register_script(_TOUCH)

    def _key(self, station_id: str) -> str:
        return f"{self.prefix}station:{encode_id(station_id)}"

    def _seen_key(self, station_id: str) -> str:
        return f"{self.prefix}seen:{encode_id(station_id)}"

    def _connectors_key(self, station_id: str) -> str:
        return f"{self.prefix}connectors:{encode_id(station_id)}"

    def _held_key(self, gateway: str) -> str:
        return f"{self.prefix}gw-stations:{encode_id(gateway)}"

    @property
    def _leases_key(self) -> str:
        return f"{self.prefix}gateways"

    @property
    def _all_key(self) -> str:
        return f"{self.prefix}stations"

    def _bucket_key(self, bucket: rules.StationBucket) -> str:
        online, registration = bucket
        return f"{self.prefix}stations-{'online' if online else 'offline'}:{registration.value}"

    def _index(self, pipe: Pipeline, old: StationRecord | None, new: StationRecord) -> None:
        """Queue the index changes of ``old`` (as read under WATCH) becoming ``new``."""
        member = new.station_id.encode()
        bucket = rules.station_bucket(new)
        if old is None:
            pipe.zadd(self._all_key, {member: 0})
        elif rules.station_bucket(old) == bucket:
            return
        else:
            pipe.zrem(self._bucket_key(rules.station_bucket(old)), member)
        pipe.zadd(self._bucket_key(bucket), {member: 0})

    def _index_unread(self, pipe: Pipeline, record: StationRecord) -> None:
        """Queue the index entries of ``record``, whatever was stored before (not read)."""
        member = record.station_id.encode()
        bucket = rules.station_bucket(record)
        pipe.zadd(self._all_key, {member: 0})
        for other in rules.STATION_BUCKETS:
            if other != bucket:
                pipe.zrem(self._bucket_key(other), member)
        pipe.zadd(self._bucket_key(bucket), {member: 0})

    def _merge(self, raw: bytes | str, seen: bytes | str | None) -> StationRecord:
        """The record in ``raw`` with the last-seen time kept in its own key."""
        record = _station_decoder.decode(raw)
        if seen is not None:
            record = rules.with_last_seen(record, _text(seen)) or record
        return record

    async def get(self, station_id: str) -> StationRecord | None:
        with self._guard("get station"):
            raw, seen = await self.client.mget(self._key(station_id), self._seen_key(station_id))
        return self._merge(raw, seen) if raw is not None else None

    async def put(self, record: StationRecord) -> None:
        data = _encoder.encode(record)
        with self._guard("put station"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self._key(record.station_id), data)
                self._index_unread(pipe, record)
                await pipe.execute()

    async def list_stations(
        self,
        *,
        cursor: str | None = None,
        limit: int = 100,
        online: bool | None = None,
        registration: RegistrationStatus | None = None,
        prefix: str | None = None,
    ) -> Page[StationRecord]:
        query = rules.station_query(cursor, limit, online, registration, prefix)
        low, high = _id_range(query)
        if query.online is None and query.registration is None:
            sources = [self._all_key]
        else:
            sources = [self._bucket_key(bucket) for bucket in rules.station_buckets(query)]
        with self._guard("list stations"):
            async with self.client.pipeline(transaction=False) as pipe:
                for source in sources:
                    pipe.zrangebylex(source, low, high, start=0, num=query.limit + 1)
                found: list[list[bytes]] = await pipe.execute()
            # The first limit + 1 of the union are among the first limit + 1 of each bucket.
            ids = sorted({_text(member) for members in found for member in members})
            page_ids = ids[: query.limit]
            keys = [key for sid in page_ids for key in (self._key(sid), self._seen_key(sid))]
            raws = await self.client.mget(keys) if keys else []
        items = []
        for raw, seen in zip(raws[::2], raws[1::2], strict=True):
            # Checked again: the station may have changed between the two reads.
            if raw is not None and query.matches(record := self._merge(raw, seen)):
                items.append(record)
        more = len(ids) > query.limit
        return Page(
            items=items,
            next_cursor=rules.encode_cursor(rules.STATION_CURSOR, page_ids[-1]) if more else None,
        )

    async def station_counts(self) -> StationCounts:
        with self._guard("station counts"):
            async with self.client.pipeline(transaction=True) as pipe:
                for bucket in rules.STATION_BUCKETS:
                    pipe.zcard(self._bucket_key(bucket))
                numbers: list[int] = await pipe.execute()
        return rules.station_counts(dict(zip(rules.STATION_BUCKETS, numbers, strict=True)))

    async def _change(
        self,
        station_id: str,
        rule: Callable[[StationRecord | None], StationRecord | None],
        what: str,
    ) -> StationRecord | None:
        """Apply ``rule`` atomically; returns the stored record, or None when it declined."""
        key = self._key(station_id)

        def attempt(raw: bytes | None) -> tuple[StationRecord | None, _Write | None]:
            old = _station_decoder.decode(raw) if raw is not None else None
            new = rule(old)
            if new is None:
                return None, None
            data = _encoder.encode(new)

            def write(pipe: Pipeline) -> None:
                pipe.set(key, data)
                self._index(pipe, old, new)

            return new, write

        return await self._optimistic(key, attempt, what)

    async def provision(self, station_id: str, registration: RegistrationStatus) -> None:
        """Declare the station known with ``registration``, keeping its other state (every
        manager applies the configuration at start-up; this must not wipe live facts)."""
        await self._change(
            station_id,
            lambda old: rules.provisioned(old, station_id, registration),
            "provision station",
        )

    async def set_registration(self, station_id: str, status: RegistrationStatus) -> None:
        await self._change(
            station_id,
            lambda old: rules.with_registration(old, station_id, status),
            "set registration",
        )

    async def set_credentials(
        self, station_id: str, credentials: StationCredentials
    ) -> StationRecord:
        record = await self._change(
            station_id,
            lambda old: rules.with_credentials(old, station_id, credentials),
            "set credentials",
        )
        assert record is not None  # with_credentials always yields a record
        return record

    async def set_password_hash(self, station_id: str, password_hash: str) -> bool:
        rules.with_password_hash(None, password_hash)  # ValueError before any round trip
        record = await self._change(
            station_id,
            lambda old: rules.with_password_hash(old, password_hash),
            "set password hash",
        )
        return record is not None

    async def set_pending_password_hash(
        self, station_id: str, password_hash: str | None, *, replacing: str | None = None
    ) -> bool:
        rules.with_pending_password_hash(None, password_hash, None)  # ValueError first
        record = await self._change(
            station_id,
            lambda old: rules.with_pending_password_hash(old, password_hash, replacing),
            "set pending password hash",
        )
        return record is not None

    async def record_boot(
        self,
        station_id: str,
        version: str,
        boot: BootInfo,
        registration: RegistrationStatus,
        at: str,
    ) -> StationRecord:
        record = await self._change(
            station_id,
            lambda old: rules.with_boot(old, station_id, version, boot, registration, at),
            "record boot",
        )
        assert record is not None  # with_boot always yields a record
        return record

    async def promote_password_hash(self, station_id: str, password_hash: str) -> bool:
        record = await self._change(
            station_id,
            lambda old: rules.with_proven_password_hash(old, password_hash),
            "promote password hash",
        )
        return record is not None

    async def mark_connected(
        self,
        station_id: str,
        version: str,
        gateway: str,
        connection: str,
        at: str,
        session: str | None = None,
        lease: float | None = None,
    ) -> None:
        key = self._key(station_id)
        member = station_id.encode()
        first_lease = time.time() + (lease or rules.FIRST_LEASE)

        def attempt(raw: bytes | None) -> tuple[None, _Write | None]:
            old = _station_decoder.decode(raw) if raw is not None else None
            new = rules.with_connection(old, station_id, version, gateway, connection, at, session)
            if new is None:
                return None, None
            data = _encoder.encode(new)

            def write(pipe: Pipeline) -> None:
                pipe.set(key, data)
                self._index(pipe, old, new)
                if old is not None and old.gateway is not None and old.gateway != gateway:
                    pipe.srem(self._held_key(old.gateway), member)
                pipe.sadd(self._held_key(gateway), member)
                pipe.zadd(self._leases_key, {gateway: first_lease}, nx=True)

            return None, write

        await self._optimistic(key, attempt, "mark connected")

    async def mark_disconnected(self, station_id: str, connection: str, at: str) -> bool:
        key = self._key(station_id)

        def attempt(raw: bytes | None) -> tuple[bool, _Write | None]:
            old = _station_decoder.decode(raw) if raw is not None else None
            new = rules.without_connection(old, connection, at)
            if new is None or old is None:
                return False, None
            data = _encoder.encode(new)
            previous_gateway = old.gateway

            def write(pipe: Pipeline) -> None:
                pipe.set(key, data)
                self._index(pipe, old, new)
                if previous_gateway is not None:
                    pipe.srem(self._held_key(previous_gateway), station_id.encode())

            return True, write

        return await self._optimistic(key, attempt, "mark disconnected")

    async def gateway_alive(self, gateway: str, until: float) -> None:
        with self._guard("gateway lease"):
            await self.client.zadd(self._leases_key, {gateway: until})

    async def gateway_gone(self, gateway: str, at: str, session: str | None = None) -> list[str]:
        with self._guard("gateway stations"):
            members = await self.client.smembers(self._held_key(gateway))
        offline = []

        def offline_rule(old: StationRecord | None) -> StationRecord | None:
            return rules.without_gateway(old, gateway, at, session)

        still_held = 0
        for station_id in sorted(_text(member) for member in members):
            record = await self._change(station_id, offline_rule, "mark offline with its gateway")
            if record is not None:
                offline.append(station_id)
            else:
                current = await self.get(station_id)
                still_held += current is not None and current.gateway == gateway
        with self._guard("gateway gone"):
            async with self.client.pipeline(transaction=True) as pipe:
                if offline:
                    pipe.srem(self._held_key(gateway), *(s.encode() for s in offline))
                if not still_held:
                    # Stations announced again in a newer session keep the gateway's lease.
                    pipe.delete(self._held_key(gateway))
                    pipe.zrem(self._leases_key, gateway)
                await pipe.execute()
        return offline

    async def expired_gateways(self, now: float) -> list[str]:
        with self._guard("expired gateways"):
            gateways = await self.client.zrangebyscore(self._leases_key, "-inf", now)
        return sorted(_text(gateway) for gateway in gateways if isinstance(gateway, bytes | str))

    async def touch(self, station_id: str, at: str) -> None:
        normalized = _fixed_width_utc(at)
        if normalized is None:
            return
        with self._guard("touch station"):
            await self._touch(keys=[self._seen_key(station_id)], args=[normalized])

    async def set_connector_status(self, station_id: str, status: ConnectorStatus) -> None:
        field = f"{status.evse_id}:{status.connector_id}"
        with self._guard("set connector status"):
            await self.client.hset(self._connectors_key(station_id), field, _encoder.encode(status))

    async def connector_statuses(self, station_id: str) -> list[ConnectorStatus]:
        with self._guard("connector statuses"):
            fields = await self.client.hgetall(self._connectors_key(station_id))
        statuses = [_connector_decoder.decode(value) for value in fields.values()]
        return sorted(statuses, key=lambda status: (status.evse_id, status.connector_id))

    async def delete(self, station_id: str) -> bool:
        """Delete the record, ``seen:`` and ``connectors:`` keys and every index entry in one
        MULTI/EXEC under WATCH of the record (a concurrent connect is redone, not lost)."""
        key = self._key(station_id)
        member = station_id.encode()

        def attempt(raw: bytes | None) -> tuple[bool, _Write]:
            old = _station_decoder.decode(raw) if raw is not None else None

            def write(pipe: Pipeline) -> None:
                pipe.delete(key, self._seen_key(station_id), self._connectors_key(station_id))
                pipe.zrem(self._all_key, member)
                for bucket in rules.STATION_BUCKETS:
                    pipe.zrem(self._bucket_key(bucket), member)
                if old is not None and old.gateway is not None:
                    pipe.srem(self._held_key(old.gateway), member)

            return old is not None, write

        return await self._optimistic(key, attempt, "delete station")


class RedisTokenStore(_RedisStore):
    """:class:`~services.interfaces.TokenStore` in Redis.

    ``accept_unknown=True`` is the first-try mode: tokens not provisioned are Accepted.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = DEFAULT_PREFIX,
        *,
        accept_unknown: bool = False,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        super().__init__(client, prefix)
        self._accept_unknown = accept_unknown
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    def _key(self, id_token: str) -> str:
        return f"{self.prefix}token:{encode_id(id_token)}"

    async def get(self, id_token: str) -> TokenRecord | None:
        """The stored record (not part of the protocol; for tools and tests)."""
        with self._guard("get token"):
            raw = await self.client.get(self._key(id_token))
        return _token_decoder.decode(raw) if raw is not None else None

    async def authorize(
        self, id_token: str, token_type: str | None = None, station_id: str | None = None
    ) -> Authorization:
        return rules.decide_token(
            await self.get(id_token),
            self._clock(),
            token_type=token_type,
            accept_unknown=self._accept_unknown,
        )

    @property
    def _all_key(self) -> str:
        return f"{self.prefix}tokens"

    async def put(self, record: TokenRecord) -> None:
        data = _encoder.encode(record)
        with self._guard("put token"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self._key(record.id_token), data)
                pipe.zadd(self._all_key, {record.id_token.encode(): 0})
                await pipe.execute()

    async def delete(self, id_token: str) -> bool:
        with self._guard("delete token"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(self._key(id_token))
                pipe.zrem(self._all_key, id_token.encode())
                deleted, _ = await pipe.execute()
        return bool(deleted)

    async def list_tokens(
        self, *, cursor: str | None = None, limit: int = 100, prefix: str | None = None
    ) -> Page[TokenRecord]:
        query = rules.token_query(cursor, limit, prefix)
        low, high = _id_range(query)
        with self._guard("list tokens"):
            members = await self.client.zrangebylex(
                self._all_key, low, high, start=0, num=query.limit + 1
            )
            ids = [_text(member) for member in members]
            page_ids = ids[: query.limit]
            raws = await self.client.mget([self._key(i) for i in page_ids]) if page_ids else []
        more = len(ids) > query.limit
        return Page(
            items=[_token_decoder.decode(raw) for raw in raws if raw is not None],
            next_cursor=rules.encode_cursor(rules.TOKEN_CURSOR, page_ids[-1]) if more else None,
        )


_NEXT_ID = """
local value = redis.call('INCR', KEYS[1])
if value > tonumber(ARGV[1]) or value < 1 then
    redis.call('SET', KEYS[1], 1)
    value = 1
end
return value
"""


class RedisTransactionStore(_RedisStore):
    """:class:`~services.interfaces.TransactionStore` in Redis, with per-station and
    per-token sets of active transactions kept in the same MULTI as the record."""

    def __init__(self, client: aioredis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        super().__init__(client, prefix)
        self._next_id = client.register_script(_NEXT_ID)

    def _ref(self, station_id: str, transaction_id: str) -> str:
        return f"{encode_id(station_id)}:{encode_id(transaction_id)}"

    def _key(self, station_id: str, transaction_id: str) -> str:
        return f"{self.prefix}tx:{self._ref(station_id, transaction_id)}"

    def _active_key(self, station_id: str) -> str:
        return f"{self.prefix}tx-active:{encode_id(station_id)}"

    def _token_key(self, id_token: str) -> str:
        return f"{self.prefix}tx-token:{encode_id(id_token)}"

    def _index_key(self, index: rules.TransactionIndex) -> str:
        kind, value = index
        if kind == "all":
            return f"{self.prefix}tx-by-start"
        return f"{self.prefix}tx-by-{kind}:{encode_id(value)}"

    def _sorted_key(self, sort_key: str) -> str:
        """The ``tx:`` key of the transaction with ``sort_key``."""
        return f"{self.prefix}tx:{rules.transaction_ref(sort_key)}"

    async def next_transaction_id(self) -> int:
        with self._guard("next transaction id"):
            value = await self._next_id(keys=[f"{self.prefix}tx-seq"], args=[rules.INT32_MAX])
        return int(value)

    async def get(self, station_id: str, transaction_id: str) -> Transaction | None:
        with self._guard("get transaction"):
            raw = await self.client.get(self._key(station_id, transaction_id))
        return _tx_decoder.decode(raw) if raw is not None else None

    def _readings_key(self, station_id: str, transaction_id: str) -> str:
        return f"{self.prefix}tx-readings:{self._ref(station_id, transaction_id)}"

    def _seq_nos_key(self, station_id: str, transaction_id: str) -> str:
        return f"{self.prefix}tx-seqnos:{self._ref(station_id, transaction_id)}"

    async def update(
        self,
        station_id: str,
        transaction_id: str,
        change: Callable[[Transaction | None], Transaction | TransactionChange],
    ) -> Transaction:
        return (await self._apply(station_id, transaction_id, change, None)).after

    async def update_event(
        self,
        station_id: str,
        transaction_id: str,
        seq_no: int,
        change: Callable[[Transaction | None], Transaction | TransactionChange],
    ) -> EventUpdate:
        return await self._apply(station_id, transaction_id, change, seq_no)

    async def readings(self, station_id: str, transaction_id: str) -> list[EnergyReading]:
        with self._guard("transaction readings"):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(self._key(station_id, transaction_id))
                pipe.lrange(self._readings_key(station_id, transaction_id), 0, -1)
                raw, items = await pipe.execute()
        if raw is None:
            return []
        listed = [_reading_decoder.decode(item) for item in items]
        old = _in_record(raw)
        if old is not None:
            merged = energy.rebuild(old.readings, _tx_decoder.decode(raw), listed, None)
            return energy.ordered_readings(
                [*old.readings, *merged.added], merged.summary.arrival_from
            )
        meter = _tx_decoder.decode(raw).meter
        return energy.ordered_readings(listed, meter.arrival_from if meter else None)

    async def seq_nos(self, station_id: str, transaction_id: str) -> list[int]:
        with self._guard("transaction seqNos"):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(self._key(station_id, transaction_id))
                pipe.smembers(self._seq_nos_key(station_id, transaction_id))
                raw, members = await pipe.execute()
        if raw is None:
            return []
        old = _in_record(raw)
        return sorted({int(member) for member in members} | set(old.seq_nos if old else ()))

    async def _apply(
        self,
        station_id: str,
        transaction_id: str,
        change: Callable[[Transaction | None], Transaction | TransactionChange],
        seq_no: int | None,
    ) -> EventUpdate:
        """WATCH the record, read it (and, only when needed, whether ``seq_no`` is applied
        and the stored readings), decide, then MULTI/EXEC the record, the readings and seqNo
        added and the index changes; redone on a concurrent change of the record. Readings
        and seqNos are only ever written together with the record, so watching it suffices.
        """
        key = self._key(station_id, transaction_id)
        with self._guard("update transaction"):
            for attempt_no in range(MAX_ATTEMPTS):
                async with self.client.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(key)
                        raw = _as_bytes(await pipe.get(key))
                        return await self._attempt(
                            pipe, station_id, transaction_id, raw, change, seq_no
                        )
                    except WatchError:
                        pass
                if attempt_no >= 2:
                    await asyncio.sleep(random.uniform(0, 0.001 * min(attempt_no, 20)))
        raise StoreUnavailable(
            f"{describe(self.client)}: update transaction gave up after {MAX_ATTEMPTS} "
            "conflicting writes"
        )

    async def _attempt(
        self,
        pipe: Pipeline,
        station_id: str,
        transaction_id: str,
        raw: bytes | None,
        change: Callable[[Transaction | None], Transaction | TransactionChange],
        seq_no: int | None,
    ) -> EventUpdate:
        readings_key = self._readings_key(station_id, transaction_id)
        seq_key = self._seq_nos_key(station_id, transaction_id)
        old = _tx_decoder.decode(raw) if raw is not None else None
        in_record = _in_record(raw) if raw is not None else None
        stored: list[EnergyReading] | None = None
        if old is not None and in_record is not None:
            # Written by an earlier version: its readings and seqNos move to their own keys.
            listed = await self._listed(pipe, readings_key)
            moved = energy.rebuild(in_record.readings, old, listed, None)
            stored = [*in_record.readings, *moved.added]
            old = msgspec.structs.replace(
                energy.derived(old, moved.summary),
                last_seq_no=max(in_record.seq_nos, default=None),
            )
        if old is not None and seq_no is not None:
            if in_record is not None:
                seen = seq_no in in_record.seq_nos
            elif old.last_seq_no is not None and seq_no <= old.last_seq_no:
                seen = bool(await pipe.sismember(seq_key, str(seq_no)))
            else:
                seen = False
            if seen:
                return EventUpdate(old, old, False)
        new, readings = rules.changed_transaction(station_id, transaction_id, change(old))
        previous = old.meter if old is not None else None
        plan = energy.advance(previous, new, readings)
        if plan is None:
            if stored is None:
                stored = await self._listed(pipe, readings_key) if old is not None else []
            plan = energy.rebuild(stored, new, readings, previous)
        new = msgspec.structs.replace(
            energy.derived(new, plan.summary), last_seq_no=rules.last_seq_no(old, seq_no)
        )
        removed, added = rules.transaction_index_changes(old, new)
        ref = self._ref(station_id, transaction_id)
        _multi(pipe)
        pipe.set(self._key(station_id, transaction_id), _encoder.encode(new))
        if old is None:
            pipe.delete(readings_key, seq_key)  # nothing is left of an earlier record
        if in_record is not None:
            pipe.delete(readings_key)
            if stored:
                pipe.rpush(readings_key, *[_encoder.encode(item) for item in stored])
            if in_record.seq_nos:
                pipe.sadd(seq_key, *[str(item) for item in in_record.seq_nos])
        if plan.added:
            pipe.rpush(readings_key, *[_encoder.encode(item) for item in plan.added])
        if seq_no is not None:
            pipe.sadd(seq_key, str(seq_no))
        for index, sort_key in removed:
            pipe.zrem(self._index_key(index), sort_key)
        for index, sort_key in added:
            pipe.zadd(self._index_key(index), {sort_key: 0})
        if old is not None and old.id_token is not None:
            pipe.srem(self._token_key(old.id_token), ref)
        if rules.is_active(new):
            pipe.sadd(self._active_key(station_id), transaction_id)
            if new.id_token is not None:
                pipe.sadd(self._token_key(new.id_token), ref)
        else:
            pipe.srem(self._active_key(station_id), transaction_id)
        await pipe.execute()
        return EventUpdate(old, new, True)

    @staticmethod
    async def _listed(pipe: Pipeline, readings_key: str) -> list[EnergyReading]:
        """The readings stored in ``readings_key`` (read under the pipeline's WATCH)."""
        items = await pipe.lrange(readings_key, 0, -1)
        return [_reading_decoder.decode(item) for item in items]

    async def _load(self, keys: list[str], what: str) -> list[Transaction]:
        if not keys:
            return []
        with self._guard(what):
            raws = await self.client.mget(keys)
        found = [_tx_decoder.decode(raw) for raw in raws if raw is not None]
        return [tx for tx in found if rules.is_active(tx)]

    async def active(self, station_id: str) -> list[Transaction]:
        with self._guard("active transactions"):
            members = await self.client.smembers(self._active_key(station_id))
        ids = sorted(_text(member) for member in members)
        keys = [self._key(station_id, tx_id) for tx_id in ids]
        return await self._load(keys, "active transactions")

    async def find_by_token(self, id_token: str) -> list[Transaction]:
        with self._guard("find transactions by token"):
            members = await self.client.smembers(self._token_key(id_token))
        keys = [f"{self.prefix}tx:{_text(member)}" for member in sorted(members, key=_text)]
        found = await self._load(keys, "find transactions by token")
        return [tx for tx in found if tx.id_token == id_token]

    async def list_transactions(
        self,
        *,
        cursor: str | None = None,
        limit: int = 100,
        station_id: str | None = None,
        state: TransactionState | None = None,
        id_token: str | None = None,
        started_after: str | None = None,
        started_before: str | None = None,
    ) -> Page[Transaction]:
        query = rules.transaction_query(
            cursor, limit, station_id, state, id_token, started_after, started_before
        )
        if rules.lists_active_set(query):
            if query.station_id is not None:
                candidates = await self.active(query.station_id)
            else:
                candidates = await self.find_by_token(query.id_token or "")
            return rules.active_page(query, candidates)
        index, exact = rules.transaction_source(query)
        if exact:
            return await self._page(self._index_key(index), query)
        return await self._scan(self._index_key(index), query)

    def _current(
        self, query: rules.TransactionQuery, sort_key: str, raw: bytes | str | None
    ) -> Transaction | None:
        """The transaction in ``raw`` if it still has ``sort_key`` and matches ``query``
        (it may have changed since the index was read)."""
        if raw is None:
            return None
        tx = _tx_decoder.decode(raw)
        if rules.transaction_key(tx) != sort_key or not query.matches(tx, sort_key):
            return None
        return tx

    async def _page(self, source: str, query: rules.TransactionQuery) -> Page[Transaction]:
        """A listing ``source`` answers by itself: one range read, one MGET of the page."""
        high, low = _key_range(query)
        with self._guard("list transactions"):
            members = await self.client.zrevrangebylex(
                source, high, low, start=0, num=query.limit + 1
            )
            sort_keys = [_text(member) for member in members[: query.limit]]
            keys = [self._sorted_key(sort_key) for sort_key in sort_keys]
            raws = await self.client.mget(keys) if keys else []
        items = [
            tx
            for sort_key, raw in zip(sort_keys, raws, strict=True)
            if (tx := self._current(query, sort_key, raw)) is not None
        ]
        more = len(members) > query.limit
        return Page(
            items=items,
            next_cursor=rules.encode_cursor(rules.TRANSACTION_CURSOR, sort_keys[-1])
            if more
            else None,
        )

    async def _scan(self, source: str, query: rules.TransactionQuery) -> Page[Transaction]:
        """A listing with filters ``source`` does not answer: read it in growing windows and
        check the records, until the page is full plus one match (so the cursor is only
        given when there is more), ``source`` ends, or LIST_SCAN_LIMIT entries were examined
        (then the cursor continues after the last one)."""
        items: list[Transaction] = []
        examined = 0
        window = min(query.limit + 1, LIST_SCAN_LIMIT)
        upper = query.upper
        while True:
            high, low = _key_range(msgspec.structs.replace(query, upper=upper))
            with self._guard("list transactions"):
                members = await self.client.zrevrangebylex(source, high, low, start=0, num=window)
                sort_keys = [_text(member) for member in members]
                raws = (
                    await self.client.mget([self._sorted_key(k) for k in sort_keys])
                    if sort_keys
                    else []
                )
            for sort_key, raw in zip(sort_keys, raws, strict=True):
                examined += 1
                tx = self._current(query, sort_key, raw)
                if tx is not None:
                    if len(items) == query.limit:
                        position = rules.transaction_key(items[-1])
                        return Page(
                            items=items,
                            next_cursor=rules.encode_cursor(rules.TRANSACTION_CURSOR, position),
                        )
                    items.append(tx)
                if examined >= LIST_SCAN_LIMIT:
                    return Page(
                        items=items,
                        next_cursor=rules.encode_cursor(rules.TRANSACTION_CURSOR, sort_key),
                    )
            if len(sort_keys) < window:
                return Page(items=items)
            upper = sort_keys[-1]
            window = min(window * 2, LIST_SCAN_LIMIT - examined, MAX_PAGE_SIZE)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_PENDING = b"P"
_ANSWER = b"A"

# A claim is "P<owner>"; an answer "A<answer>". A claim of another owner is taken over (see
# IdempotencyStore.claim): only the same owner's claim makes a copy wait.
_CLAIM = """
local value = redis.call('GET', KEYS[1])
if value then
    if string.sub(value, 1, 1) == 'A' then
        return value
    end
    if value == ARGV[1] then
        return 0
    end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def _ttl_ms(ttl: float) -> int:
    return max(1, round(ttl * 1000))


class RedisIdempotencyStore(_RedisStore):
    """:class:`~services.interfaces.IdempotencyStore` in Redis: a claim is one script that
    sets the owner's marker unless an answer (or the same owner's claim) is there; the answer
    replaces it with the same kind of expiry."""

    def __init__(self, client: aioredis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        super().__init__(client, prefix)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    def _key(self, key: str) -> str:
        return f"{self.prefix}idem:{key}"

    async def claim(self, key: str, owner: str, ttl: float) -> bytes | bool:
        marker = _PENDING + owner.encode()
        with self._guard("claim"):
            result: Any = await self._claim(keys=[self._key(key)], args=[marker, _ttl_ms(ttl)])
        if isinstance(result, int):
            return result == 1
        value = _as_bytes(result) or b""
        return value[len(_ANSWER) :]

    async def complete(self, key: str, answer: bytes, ttl: float) -> None:
        with self._guard("complete"):
            await self.client.set(self._key(key), _ANSWER + answer, px=_ttl_ms(ttl))

    async def release(self, key: str, owner: str) -> None:
        with self._guard("release"):
            await self._release(keys=[self._key(key)], args=[_PENDING + owner.encode()])


# --- rebuilding the read-side indexes ------------------------------------------------------------


class IndexRebuild(msgspec.Struct, kw_only=True, frozen=True):
    """What :func:`rebuild_indexes` did."""

    stations: int
    tokens: int
    transactions: int
    """Records indexed (a record SCAN returns twice is counted twice)."""
    removed: int
    """Index entries the second pass removed: their record is gone or no longer has them.
    (A station found in another bucket than its record's is moved by the first pass.)"""


def _glob(prefix: str) -> str:
    """``prefix`` with the glob characters of SCAN MATCH escaped."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in prefix)


async def _batches(items: AsyncIterator[_R], size: int) -> AsyncIterator[list[_R]]:
    batch: list[_R] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


_Decide = Callable[[list[bytes], list[bytes | None]], tuple[int, _Write | None]]
_Work = Callable[[list[Any]], Awaitable[int]]


async def _watched(client: aioredis.Redis, keys: list[bytes], decide: _Decide) -> int:
    """WATCH ``keys``, read them, let ``decide`` queue writes from what they hold, EXEC. A
    batch a concurrent writer changed is redone in halves (down to single keys, which are
    retried like any optimistic write). Returns the sum of ``decide``'s counts."""
    keys = list(dict.fromkeys(keys))
    for attempt_no in range(MAX_ATTEMPTS):
        async with client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(*keys)
                raws = [_as_bytes(raw) for raw in await pipe.mget(keys)]
                count, write = decide(keys, raws)
                if write is not None:
                    _multi(pipe)
                    write(pipe)
                    await pipe.execute()
                return count
            except WatchError:
                pass
        if len(keys) > 1:
            half = len(keys) // 2
            first = await _watched(client, keys[:half], decide)
            return first + await _watched(client, keys[half:], decide)
        await asyncio.sleep(random.uniform(0, 0.001 * min(attempt_no + 1, 20)))
    raise StoreUnavailable(f"{describe(client)}: index rebuild gave up on a contended record")


async def _each_batch(scan: AsyncIterator[Any], size: int, work: _Work) -> int:
    total = 0
    async for items in _batches(scan, size):
        total += await work(items)
    return total


async def rebuild_indexes(
    client: aioredis.Redis, prefix: str = DEFAULT_PREFIX, *, batch: int = 500
) -> IndexRebuild:
    """Make the read-side indexes (see the key layout above) match the records exactly.

    For records written before the indexes existed, or by an older version still running
    during an upgrade. Safe while managers run: each batch of records is read under WATCH and
    its index entries are written in the same MULTI/EXEC (a batch changed meanwhile is
    redone), so a concurrent write is never undone. Two passes (SCAN): every record adds its
    entries (and leaves the station buckets it is not in), then every index entry whose
    record is gone or no longer has it is removed. Idempotent; about four round trips per
    ``batch`` records or index entries.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    stations = RedisStationRegistry(client, prefix)
    tokens = RedisTokenStore(client, prefix)
    transactions = RedisTransactionStore(client, prefix)
    like = _glob(prefix)

    def scan(pattern: str) -> AsyncIterator[Any]:
        return client.scan_iter(match=f"{like}{pattern}", count=batch)

    def records(decide: _Decide) -> _Work:
        async def work(keys: list[Any]) -> int:
            return await _watched(client, [_as_bytes(key) or b"" for key in keys], decide)

        return work

    def index_stations(keys: list[bytes], raws: list[bytes | None]) -> tuple[int, _Write | None]:
        found = [_station_decoder.decode(raw) for raw in raws if raw is not None]

        def write(pipe: Pipeline) -> None:
            for record in found:
                stations._index_unread(pipe, record)

        return len(found), write if found else None

    def index_tokens(keys: list[bytes], raws: list[bytes | None]) -> tuple[int, _Write | None]:
        ids = [_token_decoder.decode(raw).id_token.encode() for raw in raws if raw is not None]

        def write(pipe: Pipeline) -> None:
            pipe.zadd(tokens._all_key, dict.fromkeys(ids, 0))

        return len(ids), write if ids else None

    def index_transactions(
        keys: list[bytes], raws: list[bytes | None]
    ) -> tuple[int, _Write | None]:
        found = [_tx_decoder.decode(raw) for raw in raws if raw is not None]
        entries = [entry for tx in found for entry in rules.transaction_entries(tx)]

        def write(pipe: Pipeline) -> None:
            for index, sort_key in entries:
                pipe.zadd(transactions._index_key(index), {sort_key: 0})

        return len(found), write if entries else None

    def pruner(
        index_key: str, record_key: Callable[[str], str], valid: Callable[[str, bytes], bool]
    ) -> _Work:
        """Work for one index: remove the members whose record does not have that entry."""

        async def prune(members: list[Any]) -> int:
            by_key: dict[bytes, list[str]] = {}
            for member, _ in members:
                text = _text(member)
                by_key.setdefault(record_key(text).encode(), []).append(text)

            def decide(keys: list[bytes], raws: list[bytes | None]) -> tuple[int, _Write | None]:
                stale = [
                    member.encode()
                    for key, raw in zip(keys, raws, strict=True)
                    for member in by_key[key]
                    if raw is None or not valid(member, raw)
                ]

                def write(pipe: Pipeline) -> None:
                    pipe.zrem(index_key, *stale)

                return len(stale), write if stale else None

            return await _watched(client, list(by_key), decide)

        return prune

    def always(member: str, raw: bytes) -> bool:
        return True

    def in_bucket(bucket: rules.StationBucket) -> Callable[[str, bytes], bool]:
        def valid(member: str, raw: bytes) -> bool:
            return rules.station_bucket(_station_decoder.decode(raw)) == bucket

        return valid

    def in_index(index_key: str) -> Callable[[str, bytes], bool]:
        def valid(member: str, raw: bytes) -> bool:
            return any(
                transactions._index_key(index) == index_key and sort_key == member
                for index, sort_key in rules.transaction_entries(_tx_decoder.decode(raw))
            )

        return valid

    with _guard(client, "rebuild indexes"):
        indexed_stations = await _each_batch(scan("station:*"), batch, records(index_stations))
        indexed_tokens = await _each_batch(scan("token:*"), batch, records(index_tokens))
        indexed_transactions = await _each_batch(scan("tx:*"), batch, records(index_transactions))

        prunes = [
            (stations._all_key, pruner(stations._all_key, stations._key, always)),
            (tokens._all_key, pruner(tokens._all_key, tokens._key, always)),
        ]
        for bucket in rules.STATION_BUCKETS:
            key = stations._bucket_key(bucket)
            prunes.append((key, pruner(key, stations._key, in_bucket(bucket))))
        tx_indexes = [transactions._index_key(rules.ALL_TRANSACTIONS)]
        tx_indexes += [
            transactions._index_key(("state", state.value)) for state in TransactionState
        ]
        for pattern in ("tx-by-station:*", "tx-by-token:*"):
            tx_indexes += [_text(key) async for key in scan(pattern)]
        for key in dict.fromkeys(tx_indexes):
            prunes.append((key, pruner(key, transactions._sorted_key, in_index(key))))
        removed = 0
        for key, prune in prunes:
            removed += await _each_batch(client.zscan_iter(key, count=batch), batch, prune)
    return IndexRebuild(
        stations=indexed_stations,
        tokens=indexed_tokens,
        transactions=indexed_transactions,
        removed=removed,
    )
