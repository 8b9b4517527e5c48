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
    {p}connectors:{station}           hash "{evse}:{connector}" -> ConnectorStatus
    {p}token:{id_token}               TokenRecord
    {p}gw-stations:{gateway}          set of station ids the gateway was last recorded holding
    {p}gateways                       sorted set gateway -> Unix time its lease runs out
    {p}tx:{station}:{transaction}     Transaction
    {p}tx-active:{station}            set of transaction ids not ended
    {p}tx-token:{id_token}            set of "{station}:{transaction}" not ended
    {p}tx-seq                         last 1.6 transactionId handed out
    {p}idem:{key}                     b"P" + owner while claimed, b"A" + answer once done

Any Redis or socket error is raised as :class:`~services.interfaces.StoreUnavailable`. The
client must be created with ``decode_responses=False`` (values are bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, WatchError

from services import rules
from services.interfaces import StoreUnavailable
from services.models import (
    Authorization,
    BootInfo,
    ConnectorStatus,
    RegistrationStatus,
    StationCredentials,
    StationRecord,
    TokenRecord,
    Transaction,
)

DEFAULT_PREFIX = "csms:"
MAX_ATTEMPTS = 100
"""Optimistic attempts before a write under contention gives up (StoreUnavailable)."""

_R = TypeVar("_R")
_Write = Callable[[Pipeline], None]

_encoder = msgspec.json.Encoder()
_station_decoder = msgspec.json.Decoder(StationRecord)
_connector_decoder = msgspec.json.Decoder(ConnectorStatus)
_token_decoder = msgspec.json.Decoder(TokenRecord)
_tx_decoder = msgspec.json.Decoder(Transaction)


def encode_id(value: str) -> str:
    """Percent-encode an id for use inside a key (reversible; no ``:`` survives)."""
    return quote(value, safe="")


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

    async def get(self, station_id: str) -> StationRecord | None:
        with self._guard("get station"):
            raw, seen = await self.client.mget(self._key(station_id), self._seen_key(station_id))
        if raw is None:
            return None
        record = _station_decoder.decode(raw)
        if seen is not None:
            seen_at = seen.decode() if isinstance(seen, bytes) else str(seen)
            record = rules.with_last_seen(record, seen_at) or record
        return record

    async def put(self, record: StationRecord) -> None:
        with self._guard("put station"):
            await self.client.set(self._key(record.station_id), _encoder.encode(record))

    async def _change(
        self,
        station_id: str,
        rule: Callable[[StationRecord | None], StationRecord | None],
        what: str,
    ) -> StationRecord | None:
        """Apply ``rule`` atomically; returns the stored record, or None when it declined."""
        key = self._key(station_id)

        def attempt(raw: bytes | None) -> tuple[StationRecord | None, _Write | None]:
            new = rule(_station_decoder.decode(raw) if raw is not None else None)
            if new is None:
                return None, None
            data = _encoder.encode(new)

            def write(pipe: Pipeline) -> None:
                pipe.set(key, data)

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

    async def put(self, record: TokenRecord) -> None:
        with self._guard("put token"):
            await self.client.set(self._key(record.id_token), _encoder.encode(record))


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

    async def next_transaction_id(self) -> int:
        with self._guard("next transaction id"):
            value = await self._next_id(keys=[f"{self.prefix}tx-seq"], args=[rules.INT32_MAX])
        return int(value)

    async def get(self, station_id: str, transaction_id: str) -> Transaction | None:
        with self._guard("get transaction"):
            raw = await self.client.get(self._key(station_id, transaction_id))
        return _tx_decoder.decode(raw) if raw is not None else None

    async def update(
        self,
        station_id: str,
        transaction_id: str,
        change: Callable[[Transaction | None], Transaction],
    ) -> Transaction:
        key = self._key(station_id, transaction_id)
        ref = self._ref(station_id, transaction_id)

        def attempt(raw: bytes | None) -> tuple[Transaction, _Write | None]:
            old = _tx_decoder.decode(raw) if raw is not None else None
            new = change(old)
            rules.check_changed(station_id, transaction_id, new)
            data = _encoder.encode(new)
            # Decode what is stored so the caller gets exactly what a later get() returns.
            stored = _tx_decoder.decode(data)

            def write(pipe: Pipeline) -> None:
                pipe.set(key, data)
                if old is not None and old.id_token is not None:
                    pipe.srem(self._token_key(old.id_token), ref)
                if rules.is_active(new):
                    pipe.sadd(self._active_key(station_id), transaction_id)
                    if new.id_token is not None:
                        pipe.sadd(self._token_key(new.id_token), ref)
                else:
                    pipe.srem(self._active_key(station_id), transaction_id)

            return stored, write

        return await self._optimistic(key, attempt, "update transaction")

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
