"""Redis stores: the shared state of a manager fleet.

Every record is one key holding msgspec JSON. Writes that depend on what is stored (a boot,
a connect, a disconnect, a transaction update) are optimistic: read what the decision needs
(one pipelined round trip), decide with the same pure rules as the in-memory stores
(:mod:`services.rules`), then one checked write, the :data:`~services.redis_scripts.APPLY`
script, which writes only if everything the decision read is unchanged (the SHA-1 of each
value, the seqNo looked up, the length of the readings list) and otherwise writes nothing;
the decision is then redone on fresh reads, so two managers never lose each other's update.
Counters and the idempotency claims are single Lua scripts (all in
:mod:`services.redis_scripts`).

A station Call runs as one unit of work (:class:`RedisCallUnit`, driven by the manager): its
first round trip is the :data:`~services.redis_scripts.BEGIN` script (the idempotency claim,
the records its handler is about to read, the last-seen write), the handler's decisions are
made on those reads and its writes held, and the second round trip is one checked write of
all of them with the stored answer. When something read changed meanwhile nothing is
written and the manager handles the Call again, each write then checked on its own. A read
the unit did not fetch ahead costs one more round trip, never a wrong answer.

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

Every index is changed in the same checked write as the record it describes, decided from
the record as read, so concurrent managers keep them exactly consistent; an update that
changes none of the indexed facts (a reading, a charging state) queues nothing more.
:func:`rebuild_indexes` builds them for records written before they existed.

A transaction update costs the same whatever the length of the session: the record carries
the running aggregate of its readings (:class:`~services.models.MeterSummary`), new readings
are RPUSHed to ``tx-readings`` and the event's seqNo SADDed to ``tx-seqnos`` in the same
checked write as the record (both are only written with it; a decision that read them is
checked on them too). ``tx-seqnos`` is read (SISMEMBER) only for a seqNo not above the record's
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
import contextvars
import datetime as dt
import functools
import hashlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, WatchError

from services import energy, redis_scripts, rules
from services.interfaces import ReadAhead, StoreUnavailable
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
from services.resp import RespClient, RespError, Script

__all__ = [
    "DEFAULT_PREFIX",
    "LIST_SCAN_LIMIT",
    "MAX_ATTEMPTS",
    "IndexRebuild",
    "RedisCallUnit",
    "RedisIdempotencyStore",
    "RedisStationRegistry",
    "RedisTokenStore",
    "RedisTransactionStore",
    "current_unit",
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


@functools.lru_cache(maxsize=65536)
def encode_id(value: str) -> str:
    """Percent-encode an id for use inside a key (reversible; no ``:`` survives). Cached:
    every station message names the same few ids in several keys."""
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
    except (RedisError, OSError, RespError) as exc:
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


# --- units of work: reads, held writes and the checks between them ---------------------------

_Read = tuple[str, str, str]
"""A read a decision needs: ``("get", key, "")``, ``("is", set key, member)``, ``("list",
key, "")`` (LRANGE of the whole list) or ``("members", set key, "")``."""
_Arg = bytes | str | int | float
_Op = tuple[str, str, tuple[_Arg, ...]]
"""One write: the command (or APPLY's ``max``), its key and its other arguments."""
_Runner = Callable[[list[str], list[_Arg]], Awaitable[Any]]
"""A script sent by its SHA-1 (reloaded on NOSCRIPT): ``await run(keys, args)``."""


def script_runner(client: aioredis.Redis, fast: RespClient | None, source: str) -> _Runner:
    """Run ``source`` on the thin client when there is one (the hot path), else redis-py."""
    if fast is not None:
        script = Script(source)

        def run_thin(keys: list[str], args: list[_Arg]) -> Awaitable[Any]:
            return fast.evalsha(script, keys, args)

        return run_thin
    registered = client.register_script(source)

    def run_redis_py(keys: list[str], args: list[_Arg]) -> Awaitable[Any]:
        return registered(keys=keys, args=args)

    return run_redis_py


_CHUNK = 512
"""Arguments per queued command (Lua's ``unpack`` bounds how many one call takes)."""

_CURRENT: contextvars.ContextVar[_Unit | None] = contextvars.ContextVar(
    "csms_redis_unit", default=None
)
"""The unit of the station Call this task is handling (see :class:`RedisCallUnit`)."""


def _arg_bytes(arg: _Arg) -> bytes:
    """A command argument as Redis stores it."""
    return arg if isinstance(arg, bytes) else str(arg).encode()


def _sha(raw: bytes | None) -> str:
    """What APPLY's ``v`` check compares: the value's SHA-1, ``''`` for no value."""
    return hashlib.sha1(raw).hexdigest() if raw is not None else ""


class _Missing(Exception):
    """A decision asked for something its unit has not read yet: read it, decide again."""

    def __init__(self, read: _Read) -> None:
        super().__init__(read)
        self.read = read


class _Batch:
    """The writes one decision queues. The method names are redis-py's pipeline's, so the
    index helpers write to either."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[_Op] = []

    def set(self, key: str, value: bytes, *, px: int | None = None) -> None:
        self.ops.append(("SET", key, (value,) if px is None else (value, "PX", px)))

    def set_max(self, key: str, value: str) -> None:
        """Set ``value`` unless the stored one sorts after it."""
        self.ops.append(("max", key, (value,)))

    def delete(self, *keys: str) -> None:
        self.ops.extend(("DEL", key, ()) for key in keys)

    def _many(
        self, command: str, key: str, items: tuple[_Arg, ...], head: tuple[_Arg, ...] = ()
    ) -> None:
        for start in range(0, len(items), _CHUNK):
            self.ops.append((command, key, (*head, *items[start : start + _CHUNK])))

    def rpush(self, key: str, *values: bytes) -> None:
        self._many("RPUSH", key, values)

    def sadd(self, key: str, *members: _Arg) -> None:
        self._many("SADD", key, members)

    def srem(self, key: str, *members: _Arg) -> None:
        self._many("SREM", key, members)

    def zrem(self, key: str, *members: _Arg) -> None:
        self._many("ZREM", key, members)

    def zadd(self, key: str, mapping: Mapping[Any, float], nx: bool = False) -> None:
        pairs = tuple(item for member, score in mapping.items() for item in (score, member))
        self._many("ZADD", key, pairs, ("NX",) if nx else ())

    def hset(self, key: str, field: str, value: bytes) -> None:
        self.ops.append(("HSET", key, (field, value)))

    def flag(self, key: str, source: str, member: _Arg) -> None:
        """Make ``member`` a member of ``key`` while the set ``source`` (written earlier in
        this batch) has members, else remove it: decided by APPLY, so nothing is read."""
        self.ops.append(("flag", key, (source, member)))


class _View:
    """What one decision reads, through its unit: what the unit wrote as written (its own
    checks cover it), the rest as read from Redis, each noted as a check of the write."""

    __slots__ = ("_unit", "checks")

    def __init__(self, unit: _Unit) -> None:
        self._unit = unit
        self.checks: dict[tuple[str, str, str], str] = {}

    def value(self, key: str) -> bytes | None:
        unit = self._unit
        if key in unit.written:
            return unit.written[key]
        if key not in unit.read:
            raise _Missing(("get", key, ""))
        raw = unit.read[key]
        self.checks[("v", key, "")] = _sha(raw)
        return raw

    def is_member(self, key: str, member: str) -> bool:
        unit = self._unit
        changed = unit.changes.get(key, {}).get(member)
        if changed is not None:
            return changed
        if key in unit.cleared:
            return False
        if (key, member) in unit.membership:
            found = unit.membership[(key, member)]
        elif key in unit.sets:
            found = member in unit.sets[key]
        else:
            raise _Missing(("is", key, member))
        self.checks[("m" if found else "n", key, member)] = member
        return found

    def items(self, key: str) -> list[bytes]:
        unit = self._unit
        appended = unit.appended.get(key, [])
        if key in unit.cleared:
            return list(appended)
        if key not in unit.lists:
            raise _Missing(("list", key, ""))
        stored = unit.lists[key]
        self.checks[("l", key, "")] = str(len(stored))
        return [*stored, *appended]


class _Unit:
    """A unit of work on one Redis: what it read (as read), what it wrote (held back) and
    the checks its writes depend on. Store operations decide on it (:meth:`decide`);
    :meth:`commit` writes everything in one APPLY, or nothing when a check fails. A single
    store operation outside a station Call is a unit of its own."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        apply: _Runner,
        fast: RespClient | None = None,
    ) -> None:
        self.client = client
        self.fast = fast
        """The thin client the unit's own reads go through, when the stores have one."""
        self.prefix = prefix
        self.open = True
        """False once committed or dropped: store operations then write at once."""
        self._apply = apply
        self.read: dict[str, bytes | None] = {}
        self.membership: dict[tuple[str, str], bool] = {}
        self.sets: dict[str, frozenset[str]] = {}
        self.lists: dict[str, list[bytes]] = {}
        self.written: dict[str, bytes | None] = {}
        self.changes: dict[str, dict[str, bool]] = {}
        """Set members added (True) or removed (False) here."""
        self.appended: dict[str, list[bytes]] = {}
        self.cleared: set[str] = set()
        """Keys deleted here (lists and sets then hold only what was added since)."""
        self.fields: dict[str, dict[str, bytes]] = {}
        """Hash fields written here."""
        self.new_ids: list[int] = []
        """1.6 transaction ids taken ahead (BEGIN), handed out by next_transaction_id."""
        self._checks: dict[tuple[str, str, str], str] = {}
        self._ops: list[_Op] = []

    def _knows(self, read: _Read) -> bool:
        kind, key, member = read
        if kind == "get":
            return key in self.read
        if kind == "is":
            return (key, member) in self.membership or key in self.sets
        if kind == "list":
            return key in self.lists
        return key in self.sets

    def _keep(self, read: _Read, result: Any) -> None:
        kind, key, member = read
        if kind == "get":
            self.read[key] = _as_bytes(result)
        elif kind == "is":
            self.membership[(key, member)] = bool(result)
        elif kind == "list":
            self.lists[key] = [_as_bytes(item) or b"" for item in result]
        else:
            self.sets[key] = frozenset(_text(item) for item in result)

    async def fetch(self, reads: Iterable[_Read]) -> None:
        """Read what is not known yet, in one pipelined round trip (none when all is)."""
        wanted = [read for read in dict.fromkeys(reads) if not self._knows(read)]
        if not wanted:
            return
        if self.fast is not None:
            commands = [_read_command(read) for read in wanted]
            results = await self.fast.pipeline(commands)
            for result in results:
                if isinstance(result, RespError):
                    raise result
            for read, result in zip(wanted, results, strict=True):
                self._keep(read, result)
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for kind, key, member in wanted:
                if kind == "get":
                    pipe.get(key)
                elif kind == "is":
                    pipe.sismember(key, member)
                elif kind == "list":
                    pipe.lrange(key, 0, -1)
                else:
                    pipe.smembers(key)
            results = await pipe.execute()
        for read, result in zip(wanted, results, strict=True):
            self._keep(read, result)

    async def decide(
        self, decide: Callable[[_View, _Batch], _R], reads: Iterable[_Read] = ()
    ) -> _R:
        """Run ``decide`` (pure: it may run again) on what the unit knows, reading what it
        asks for, and hold its writes with the checks of what it read."""
        await self.fetch(reads)
        while True:
            view, batch = _View(self), _Batch()
            try:
                result = decide(view, batch)
            except _Missing as missing:
                await self.fetch([missing.read])
                continue
            if batch.ops:
                self._checks.update(view.checks)
                self._hold(batch.ops)
            return result

    def hold(self, ops: list[_Op]) -> None:
        """Queue writes no decision reads back (an event's XADD): stored with the rest, in
        the same APPLY, or not at all."""
        self._ops.extend(ops)

    def _hold(self, ops: list[_Op]) -> None:
        """Queue ``ops`` and keep what they make the keys hold, for later reads here."""
        for command, key, args in ops:
            if command == "SET":
                self.written[key] = _arg_bytes(args[0])
            elif command == "DEL":
                self.written[key] = None
                self.cleared.add(key)
                for held in (self.appended, self.changes, self.fields):
                    held.pop(key, None)
            elif command == "RPUSH":
                self.appended.setdefault(key, []).extend(_arg_bytes(arg) for arg in args)
            elif command in ("SADD", "SREM"):
                changes = self.changes.setdefault(key, {})
                changes.update(
                    dict.fromkeys((_arg_bytes(a).decode() for a in args), command == "SADD")
                )
            elif command == "HSET":
                self.fields.setdefault(key, {})[_arg_bytes(args[0]).decode()] = _arg_bytes(args[1])
        self._ops.extend(ops)

    async def values(self, keys: list[str]) -> list[bytes | None]:
        """The current values of ``keys`` (as written here, else as read)."""
        await self.fetch(("get", key, "") for key in keys if key not in self.written)
        return [self.written[key] if key in self.written else self.read[key] for key in keys]

    async def members(self, key: str) -> set[str]:
        """The current members of the set ``key``."""
        found: set[str] = set()
        if key not in self.cleared:
            await self.fetch([("members", key, "")])
            found = set(self.sets[key])
        for member, present in self.changes.get(key, {}).items():
            if present:
                found.add(member)
            else:
                found.discard(member)
        return found

    def load(self, reads: list[_Read], results: list[Any]) -> None:
        """Keep what BEGIN read ahead (``reads`` as :meth:`RedisCallUnit.claim` asked)."""
        for (kind, key, arg), result in zip(reads, results, strict=True):
            if kind in ("get", "is"):
                self._keep((kind, key, arg), result)
            elif kind in ("ids", "refs"):
                members, records = result
                names = [_text(member) for member in members]
                self.sets[key] = frozenset(names)
                for name, record in zip(names, records, strict=True):
                    record_key = arg + (encode_id(name) if kind == "ids" else name)
                    self.read[record_key] = _as_bytes(record)
            elif kind == "id":
                value, record = result
                self.new_ids.append(int(value))
                self.read[f"{arg}{int(value)}"] = _as_bytes(record)

    async def commit(self, last: _Batch | None = None) -> bool:
        """Write everything held (and ``last``) in one APPLY; False when a check failed
        (nothing written). Closes the unit."""
        self.open = False
        ops = self._ops if last is None else [*self._ops, *last.ops]
        if not ops:
            return True
        positions: dict[str, int] = {}
        args: list[_Arg] = [len(self._checks)]
        for (kind, key, _), arg in self._checks.items():
            args += [kind, positions.setdefault(key, len(positions) + 1), arg]
        for command, key, values in ops:
            args += [command, positions.setdefault(key, len(positions) + 1), len(values), *values]
        written = await self._apply(list(positions), args)
        return bool(written == 1)


def _read_command(read: _Read) -> tuple[_Arg, ...]:
    """The command of one of :meth:`_Unit.fetch`'s reads."""
    kind, key, member = read
    if kind == "get":
        return (b"GET", key)
    if kind == "is":
        return (b"SISMEMBER", key, member)
    if kind == "list":
        return (b"LRANGE", key, 0, -1)
    return (b"SMEMBERS", key)


def current_unit(client: aioredis.Redis) -> _Unit | None:
    """The open unit of the station Call this task is handling, if it is on ``client``'s
    Redis: a write queued on it (:meth:`_Unit.hold`) is stored with the Call's answer."""
    unit = _CURRENT.get()
    if unit is None or not unit.open or unit.client is not client:
        return None
    return unit


class _RedisStore:
    """Common plumbing: the client, the prefix, the optimistic write loops.

    ``fast`` (:class:`~services.resp.RespClient`, on the same Redis) carries what a station
    message costs: the scripts, the units' reads and the plain reads of :meth:`_values`;
    everything else stays on ``client``.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = DEFAULT_PREFIX,
        *,
        fast: RespClient | None = None,
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("Redis stores need a client with decode_responses=False")
        self.client = client
        self.fast = fast
        self.prefix = prefix
        self._apply_script = self._runner(redis_scripts.APPLY)

    def _runner(self, source: str) -> _Runner:
        return script_runner(self.client, self.fast, source)

    def _guard(self, what: str) -> contextlib.AbstractContextManager[None]:
        return _guard(self.client, what)

    def _unit(self) -> _Unit | None:
        """The open unit of the station Call being handled, if it is on this Redis."""
        return current_unit(self.client)

    async def _run(
        self, decide: Callable[[_View, _Batch], _R], reads: Iterable[_Read], what: str
    ) -> _R:
        """Decide and write atomically. In a station Call's unit the writes are held and
        stored with its answer; otherwise read (``reads`` first, in one round trip), decide,
        APPLY, and on a failed check decide again on fresh reads, with a short jittered
        pause after the first attempts."""
        with self._guard(what):
            unit = self._unit()
            if unit is not None:
                return await unit.decide(decide, reads)
            for attempt_no in range(MAX_ATTEMPTS):
                unit = _Unit(self.client, self.prefix, self._apply_script, self.fast)
                result = await unit.decide(decide, reads)
                if await unit.commit():
                    return result
                if attempt_no >= 2:
                    await asyncio.sleep(random.uniform(0, 0.001 * min(attempt_no, 20)))
        raise StoreUnavailable(
            f"{describe(self.client)}: {what} gave up after {MAX_ATTEMPTS} conflicting writes"
        )

    async def _values(self, keys: list[str], what: str) -> list[bytes | None]:
        """The values of ``keys``: from the Call's unit when there is one, else one read."""
        with self._guard(what):
            unit = self._unit()
            if unit is not None:
                return await unit.values(keys)
            if self.fast is not None:
                if len(keys) == 1:
                    return [await self.fast.execute(b"GET", keys[0])]
                found: list[bytes | None] = await self.fast.execute(b"MGET", *keys)
                return found
            if len(keys) == 1:
                return [_as_bytes(await self.client.get(keys[0]))]
            return [_as_bytes(raw) for raw in await self.client.mget(keys)]

    async def _optimistic(
        self,
        key: str,
        attempt: Callable[[bytes | None], tuple[_R, _Write | None]],
        what: str,
    ) -> _R:
        """WATCH ``key``, read it, let ``attempt`` decide (result, writes or None), MULTI/EXEC.

        Retried on a concurrent change of ``key`` with a short jittered pause. For the
        writes no station Call makes (see :meth:`_run` for the others); a WATCH also sees
        the keys APPLY writes, and APPLY's checks see what MULTI/EXEC wrote.
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


def _fixed_width_utc(at: str) -> str | None:
    """``at`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (so text order is time order), None if unparsable."""
    moment = rules.parse_time(at)
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Key names several stores (and a station Call's unit) use; see the layout above.


def _station_key(prefix: str, station_id: str) -> str:
    return f"{prefix}station:{encode_id(station_id)}"


def _seen_key(prefix: str, station_id: str) -> str:
    return f"{prefix}seen:{encode_id(station_id)}"


def _token_key(prefix: str, id_token: str) -> str:
    return f"{prefix}token:{encode_id(id_token)}"


def _tx_prefix(prefix: str, station_id: str) -> str:
    """The station's transaction record keys up to the (percent-encoded) transaction id."""
    return f"{prefix}tx:{encode_id(station_id)}:"


def _tx_key(prefix: str, station_id: str, transaction_id: str) -> str:
    return _tx_prefix(prefix, station_id) + encode_id(transaction_id)


def _seq_nos_key(prefix: str, station_id: str, transaction_id: str) -> str:
    return f"{prefix}tx-seqnos:{encode_id(station_id)}:{encode_id(transaction_id)}"


def _active_key(prefix: str, station_id: str) -> str:
    return f"{prefix}tx-active:{encode_id(station_id)}"


def _token_transactions_key(prefix: str, id_token: str) -> str:
    return f"{prefix}tx-token:{encode_id(id_token)}"


class RedisStationRegistry(_RedisStore):
    """:class:`~services.interfaces.StationRegistry` in Redis.

    The record lives in ``station:{id}``; the last-seen time, written on every station message,
    in its own ``seen:{id}`` key so that write is one command instead of a read-modify-write of
    the whole record (a station Call's unit makes it with its claim). :meth:`get` merges the
    two.
    """

    def _key(self, station_id: str) -> str:
        return _station_key(self.prefix, station_id)

    def _seen_key(self, station_id: str) -> str:
        return _seen_key(self.prefix, station_id)

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

    def _faulted_connectors_key(self, station_id: str) -> str:
        return f"{self.prefix}connectors-faulted:{encode_id(station_id)}"

    @property
    def _faulted_key(self) -> str:
        """The set of stations with a connector whose latest status is Faulted."""
        return f"{self.prefix}stations-faulted"

    def _bucket_key(self, bucket: rules.StationBucket) -> str:
        online, registration = bucket
        return f"{self.prefix}stations-{'online' if online else 'offline'}:{registration.value}"

    def _index(
        self, pipe: Pipeline | _Batch, old: StationRecord | None, new: StationRecord
    ) -> None:
        """Queue the index changes of ``old`` (as the decision read it) becoming ``new``."""
        member = new.station_id.encode()
        bucket = rules.station_bucket(new)
        if old is None:
            pipe.zadd(self._all_key, {member: 0})
        elif rules.station_bucket(old) == bucket:
            return
        else:
            pipe.zrem(self._bucket_key(rules.station_bucket(old)), member)
        pipe.zadd(self._bucket_key(bucket), {member: 0})

    def _index_unread(self, pipe: Pipeline | _Batch, record: StationRecord) -> None:
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
        keys = [self._key(station_id), self._seen_key(station_id)]
        raw, seen = await self._values(keys, "get station")
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
                pipe.scard(self._faulted_key)
                *numbers, faulted = await pipe.execute()
        counts = rules.station_counts(dict(zip(rules.STATION_BUCKETS, numbers, strict=True)))
        return msgspec.structs.replace(counts, faulted=int(faulted))

    async def _change(
        self,
        station_id: str,
        rule: Callable[[StationRecord | None], StationRecord | None],
        what: str,
    ) -> StationRecord | None:
        """Apply ``rule`` atomically; returns the stored record, or None when it declined."""
        key = self._key(station_id)

        def decide(view: _View, batch: _Batch) -> StationRecord | None:
            raw = view.value(key)
            old = _station_decoder.decode(raw) if raw is not None else None
            new = rule(old)
            if new is not None:
                batch.set(key, _encoder.encode(new))
                self._index(batch, old, new)
            return new

        return await self._run(decide, [("get", key, "")], what)

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

    async def set_pending_security_profile(self, station_id: str, profile: int) -> bool:
        rules.with_pending_security_profile(None, profile)  # ValueError before any round trip
        record = await self._change(
            station_id,
            lambda old: rules.with_pending_security_profile(old, profile),
            "set pending security profile",
        )
        return record is not None

    async def raise_security_profile(self, station_id: str, profile: int) -> int | None:
        record = await self._change(
            station_id,
            lambda old: rules.with_security_profile_reached(old, profile),
            "raise security profile",
        )
        return record.security_profile if record is not None else None

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

        def decide(view: _View, batch: _Batch) -> None:
            raw = view.value(key)
            old = _station_decoder.decode(raw) if raw is not None else None
            new = rules.with_connection(old, station_id, version, gateway, connection, at, session)
            if new is None:
                return
            batch.set(key, _encoder.encode(new))
            self._index(batch, old, new)
            if old is not None and old.gateway is not None and old.gateway != gateway:
                batch.srem(self._held_key(old.gateway), member)
            batch.sadd(self._held_key(gateway), member)
            batch.zadd(self._leases_key, {gateway: first_lease}, nx=True)

        await self._run(decide, [("get", key, "")], "mark connected")

    async def mark_disconnected(self, station_id: str, connection: str, at: str) -> bool:
        key = self._key(station_id)

        def decide(view: _View, batch: _Batch) -> bool:
            raw = view.value(key)
            old = _station_decoder.decode(raw) if raw is not None else None
            new = rules.without_connection(old, connection, at)
            if new is None or old is None:
                return False
            batch.set(key, _encoder.encode(new))
            self._index(batch, old, new)
            if old.gateway is not None:
                batch.srem(self._held_key(old.gateway), station_id.encode())
            return True

        return await self._run(decide, [("get", key, "")], "mark disconnected")

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
        seen_key = self._seen_key(station_id)

        def decide(view: _View, batch: _Batch) -> None:
            batch.set_max(seen_key, normalized)

        await self._run(decide, (), "touch station")

    async def set_connector_status(self, station_id: str, status: ConnectorStatus) -> None:
        key, field = self._connectors_key(station_id), f"{status.evse_id}:{status.connector_id}"
        data = _encoder.encode(status)
        # A station is faulted while any of its connectors is: its faulted connectors are a
        # set of their own, and APPLY keeps the station in the faulted set while that one has
        # members, in the same write and without a read.
        faulted_connectors = self._faulted_connectors_key(station_id)
        member = station_id.encode()

        def decide(view: _View, batch: _Batch) -> None:
            batch.hset(key, field, data)
            if status.status == "Faulted":
                batch.sadd(faulted_connectors, field)
            else:
                batch.srem(faulted_connectors, field)
            batch.flag(self._faulted_key, faulted_connectors, member)

        await self._run(decide, (), "set connector status")

    async def connector_statuses(self, station_id: str) -> list[ConnectorStatus]:
        key = self._connectors_key(station_id)
        with self._guard("connector statuses"):
            fields = {
                _text(name): value for name, value in (await self.client.hgetall(key)).items()
            }
        unit = self._unit()
        if unit is not None:
            fields.update(unit.fields.get(key, {}))
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
                pipe.delete(self._faulted_connectors_key(station_id))
                pipe.srem(self._faulted_key, member)
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
        fast: RespClient | None = None,
    ) -> None:
        super().__init__(client, prefix, fast=fast)
        self._accept_unknown = accept_unknown
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    def _key(self, id_token: str) -> str:
        return _token_key(self.prefix, id_token)

    async def get(self, id_token: str) -> TokenRecord | None:
        """The stored record (not part of the protocol; for tools and tests)."""
        [raw] = await self._values([self._key(id_token)], "get token")
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


class RedisTransactionStore(_RedisStore):
    """:class:`~services.interfaces.TransactionStore` in Redis, with per-station and
    per-token sets of active transactions kept in the same checked write as the record."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = DEFAULT_PREFIX,
        *,
        fast: RespClient | None = None,
    ) -> None:
        super().__init__(client, prefix, fast=fast)
        self._next_id = self._runner(redis_scripts.NEXT_ID)

    def _ref(self, station_id: str, transaction_id: str) -> str:
        return f"{encode_id(station_id)}:{encode_id(transaction_id)}"

    def _key(self, station_id: str, transaction_id: str) -> str:
        return _tx_key(self.prefix, station_id, transaction_id)

    def _active_key(self, station_id: str) -> str:
        return _active_key(self.prefix, station_id)

    def _token_key(self, id_token: str) -> str:
        return _token_transactions_key(self.prefix, id_token)

    def _index_key(self, index: rules.TransactionIndex) -> str:
        kind, value = index
        if kind == "all":
            return f"{self.prefix}tx-by-start"
        return f"{self.prefix}tx-by-{kind}:{encode_id(value)}"

    def _sorted_key(self, sort_key: str) -> str:
        """The ``tx:`` key of the transaction with ``sort_key``."""
        return f"{self.prefix}tx:{rules.transaction_ref(sort_key)}"

    async def next_transaction_id(self) -> int:
        unit = self._unit()
        if unit is not None and unit.new_ids:
            return unit.new_ids.pop(0)  # taken with the Call's claim
        with self._guard("next transaction id"):
            value = await self._next_id([f"{self.prefix}tx-seq"], [rules.INT32_MAX])
        return int(value)

    async def get(self, station_id: str, transaction_id: str) -> Transaction | None:
        [raw] = await self._values([self._key(station_id, transaction_id)], "get transaction")
        return _tx_decoder.decode(raw) if raw is not None else None

    def _readings_key(self, station_id: str, transaction_id: str) -> str:
        return f"{self.prefix}tx-readings:{self._ref(station_id, transaction_id)}"

    def _seq_nos_key(self, station_id: str, transaction_id: str) -> str:
        return _seq_nos_key(self.prefix, station_id, transaction_id)

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
        """Read the record (and, only when needed, whether ``seq_no`` is applied and the
        stored readings), decide, then write the record, the readings and seqNo added and the
        index changes in one checked write (held in a station Call's unit); decided again when
        the record, that seqNo or the readings changed meanwhile."""
        key = self._key(station_id, transaction_id)
        readings_key = self._readings_key(station_id, transaction_id)
        seq_key = self._seq_nos_key(station_id, transaction_id)

        def readings(view: _View) -> list[EnergyReading]:
            return [_reading_decoder.decode(item) for item in view.items(readings_key)]

        def decide(view: _View, batch: _Batch) -> EventUpdate:
            raw = view.value(key)
            old = _tx_decoder.decode(raw) if raw is not None else None
            in_record = _in_record(raw) if raw is not None else None
            stored: list[EnergyReading] | None = None
            if old is not None and in_record is not None:
                # Written by an earlier version: its readings and seqNos move to their own keys.
                moved = energy.rebuild(in_record.readings, old, readings(view), None)
                stored = [*in_record.readings, *moved.added]
                old = msgspec.structs.replace(
                    energy.derived(old, moved.summary),
                    last_seq_no=max(in_record.seq_nos, default=None),
                )
            if old is not None and seq_no is not None:
                if in_record is not None:
                    seen = seq_no in in_record.seq_nos
                elif old.last_seq_no is not None and seq_no <= old.last_seq_no:
                    seen = view.is_member(seq_key, str(seq_no))
                else:
                    seen = False
                if seen:
                    return EventUpdate(old, old, False)
            new, added_readings = rules.changed_transaction(station_id, transaction_id, change(old))
            previous = old.meter if old is not None else None
            plan = energy.advance(previous, new, added_readings)
            if plan is None:
                if stored is None:
                    stored = readings(view) if old is not None else []
                plan = energy.rebuild(stored, new, added_readings, previous)
            new = msgspec.structs.replace(
                energy.derived(new, plan.summary), last_seq_no=rules.last_seq_no(old, seq_no)
            )
            self._write(batch, station_id, transaction_id, old, new, seq_no)
            if old is None:
                batch.delete(readings_key, seq_key)  # nothing is left of an earlier record
            if in_record is not None:
                batch.delete(readings_key)
                if stored:
                    batch.rpush(readings_key, *[_encoder.encode(item) for item in stored])
                if in_record.seq_nos:
                    batch.sadd(seq_key, *[str(item) for item in in_record.seq_nos])
            if plan.added:
                batch.rpush(readings_key, *[_encoder.encode(item) for item in plan.added])
            if seq_no is not None:
                batch.sadd(seq_key, str(seq_no))
            return EventUpdate(old, new, True)

        return await self._run(decide, [("get", key, "")], "update transaction")

    def _write(
        self,
        batch: _Batch,
        station_id: str,
        transaction_id: str,
        old: Transaction | None,
        new: Transaction,
        seq_no: int | None,
    ) -> None:
        """Queue the record ``new`` replacing ``old`` and the index and set changes."""
        ref = self._ref(station_id, transaction_id)
        batch.set(self._key(station_id, transaction_id), _encoder.encode(new))
        removed, added = rules.transaction_index_changes(old, new)
        for index, sort_key in removed:
            batch.zrem(self._index_key(index), sort_key)
        for index, sort_key in added:
            batch.zadd(self._index_key(index), {sort_key: 0})
        if old is not None and old.id_token is not None:
            batch.srem(self._token_key(old.id_token), ref)
        if rules.is_active(new):
            batch.sadd(self._active_key(station_id), transaction_id)
            if new.id_token is not None:
                batch.sadd(self._token_key(new.id_token), ref)
        else:
            batch.srem(self._active_key(station_id), transaction_id)

    async def _members(self, key: str, what: str) -> list[str]:
        """The members of the set ``key``, sorted (from the Call's unit when there is one)."""
        with self._guard(what):
            unit = self._unit()
            if unit is not None:
                return sorted(await unit.members(key))
            return sorted(_text(member) for member in await self.client.smembers(key))

    async def _load(self, keys: list[str], what: str) -> list[Transaction]:
        if not keys:
            return []
        raws = await self._values(keys, what)
        found = [_tx_decoder.decode(raw) for raw in raws if raw is not None]
        return [tx for tx in found if rules.is_active(tx)]

    async def active(self, station_id: str) -> list[Transaction]:
        ids = await self._members(self._active_key(station_id), "active transactions")
        keys = [self._key(station_id, tx_id) for tx_id in ids]
        return await self._load(keys, "active transactions")

    async def find_by_token(self, id_token: str) -> list[Transaction]:
        refs = await self._members(self._token_key(id_token), "find transactions by token")
        found = await self._load(
            [f"{self.prefix}tx:{ref}" for ref in refs], "find transactions by token"
        )
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
"""A claim is ``P<owner>``; an answer ``A<answer>``. A claim of another owner is taken over
(see IdempotencyStore.claim): only the same owner's claim makes a copy wait."""


def _ttl_ms(ttl: float) -> int:
    return max(1, round(ttl * 1000))


def _claimed(result: Any) -> bytes | bool:
    """What CLAIM (or BEGIN) answered, as ``IdempotencyStore.claim`` returns it."""
    if isinstance(result, int):
        return result == 1
    value = _as_bytes(result) or b""
    return value[len(_ANSWER) :]


class RedisIdempotencyStore(_RedisStore):
    """:class:`~services.interfaces.IdempotencyStore` in Redis: a claim is one script that
    sets the owner's marker unless an answer (or the same owner's claim) is there; the answer
    replaces it with the same kind of expiry. Also a
    :class:`~services.interfaces.CallUnits`: see :class:`RedisCallUnit`."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = DEFAULT_PREFIX,
        *,
        fast: RespClient | None = None,
    ) -> None:
        super().__init__(client, prefix, fast=fast)
        self._claim = self._runner(redis_scripts.CLAIM)
        self._release = self._runner(redis_scripts.RELEASE)
        self._begin = self._runner(redis_scripts.BEGIN)

    def _key(self, key: str) -> str:
        return f"{self.prefix}idem:{key}"

    async def claim(self, key: str, owner: str, ttl: float) -> bytes | bool:
        marker = _PENDING + owner.encode()
        with self._guard("claim"):
            result: Any = await self._claim([self._key(key)], [marker, _ttl_ms(ttl)])
        return _claimed(result)

    async def complete(self, key: str, answer: bytes, ttl: float) -> None:
        with self._guard("complete"):
            if self.fast is not None:
                await self.fast.execute(
                    b"SET", self._key(key), _ANSWER + answer, b"PX", _ttl_ms(ttl)
                )
            else:
                await self.client.set(self._key(key), _ANSWER + answer, px=_ttl_ms(ttl))

    async def release(self, key: str, owner: str) -> None:
        with self._guard("release"):
            await self._release([self._key(key)], [_PENDING + owner.encode()])

    def unit(
        self, key: str, owner: str, ttl: float, *, ahead: ReadAhead, seen_at: str
    ) -> RedisCallUnit:
        """The Call's unit. It reads and writes the other stores' keys under this store's
        prefix, as :func:`services.factory.open_services` builds them (one client, one
        prefix): last-seen goes to the :class:`RedisStationRegistry`'s ``seen:`` key."""
        return RedisCallUnit(self, key, owner, ttl, ahead=ahead, seen_at=seen_at)


class RedisCallUnit:
    """:class:`~services.interfaces.CallUnit` on Redis: a station Call in two round trips.

    :meth:`claim` is one BEGIN script: the claim, then (when taken) the reads ``ahead``
    names, then the last-seen write. While the unit is entered, the Redis stores on the same
    client answer reads from what it read and hold their writes, each decided as it would be
    alone; :meth:`complete` stores them all with the answer in one APPLY, checked against
    what their decisions read. Reads it did not fetch ahead are made when asked for (one
    round trip each), so the hint is never a matter of correctness.
    """

    def __init__(
        self,
        store: RedisIdempotencyStore,
        key: str,
        owner: str,
        ttl: float,
        *,
        ahead: ReadAhead,
        seen_at: str,
    ) -> None:
        self._store = store
        self._key = store._key(key)
        self._marker = _PENDING + owner.encode()
        self._ttl = ttl
        self._ahead = ahead
        self._seen = _fixed_width_utc(seen_at) or ""
        self._unit = _Unit(store.client, store.prefix, store._apply_script, store.fast)
        self._entered: contextvars.Token[_Unit | None] | None = None

    async def __aenter__(self) -> RedisCallUnit:
        self._entered = _CURRENT.set(self._unit)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._unit.open = False
        if self._entered is not None:
            _CURRENT.reset(self._entered)
            self._entered = None

    def _reads(self) -> list[tuple[str, str, str]]:
        """BEGIN's reads for ``ahead``: (kind, key, argument), see redis_scripts.BEGIN."""
        p, ahead = self._store.prefix, self._ahead
        station = ahead.station_id
        reads = [("get", _station_key(p, station), ""), ("get", _seen_key(p, station), "")]
        reads += [("get", _token_key(p, token), "") for token in ahead.tokens]
        reads += [("get", _tx_key(p, station, tx), "") for tx in ahead.transactions]
        if ahead.seq_no is not None:
            tx, seq_no = ahead.seq_no
            reads.append(("is", _seq_nos_key(p, station, tx), str(seq_no)))
        if ahead.active:
            reads.append(("ids", _active_key(p, station), _tx_prefix(p, station)))
        for token in ahead.token_transactions:
            reads.append(("refs", _token_transactions_key(p, token), f"{p}tx:"))
        if ahead.new_transaction_id:
            reads.append(("id", f"{p}tx-seq", _tx_prefix(p, station)))
        return reads

    async def claim(self) -> bytes | bool:
        reads = self._reads()
        positions = {self._key: 1, _seen_key(self._store.prefix, self._ahead.station_id): 2}
        args: list[_Arg] = [self._marker, _ttl_ms(self._ttl), self._seen]
        for kind, key, arg in reads:
            args += [kind, positions.setdefault(key, len(positions) + 1), arg]
        with self._store._guard("claim"):
            found: list[Any] = await self._store._begin(list(positions), args)
        claim = _claimed(found[0])
        if claim is True:
            self._unit.load(reads, found[1:])
        return claim

    async def complete(self, answer: bytes, ttl: float) -> bool:
        last = _Batch()
        last.set(self._key, _ANSWER + answer, px=_ttl_ms(ttl))
        with self._store._guard("complete"):
            return await self._unit.commit(last)

    async def release(self) -> None:
        self._unit.open = False
        with self._store._guard("release"):
            await self._store._release([self._key], [self._marker])


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
