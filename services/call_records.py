"""Records of CSMS calls and their outcomes, so a caller that did not wait can read them later.

A :class:`CallRecord` holds what was asked (station, version, action, the request payload,
when) and what became of it (the same outcomes a waiting caller gets, plus ``pending``). Any
API replica reads any record: the records live in the shared store.

Who writes what:

- :meth:`CallRecordStore.begin`: the operator API, **before** it publishes the call, with
  the outcome ``pending``. A fast outcome is then always written after it and can never be
  overwritten by ``pending``.
- :meth:`CallRecordStore.finish`: whoever learns the final outcome. The managers do it for
  every outcome the gateway publishes on the shared ``in`` topic (any action, any version),
  so the outcome is stored even when the API replica that sent the call is gone; the API
  also writes the outcomes it learns itself (offline, and what a waiting call got back).
  A finish never replaces the request data (it only fills in what is missing) and never
  replaces a final outcome: the first one stored stays. It **creates** the record when there
  is none, from the original call the gateway attaches to every outcome, so calls sent by
  anything else (a password rotation through the CallMaker, remote start) are recorded too.

Reading: a record still ``pending`` after its ``deadline`` (the gateway died with the call,
nothing will come) reads as ``no_outcome``; should its outcome still arrive (a call that
waited long in the gateway's queue), that outcome replaces it.

Lifetime: a record lives ``ttl`` seconds (setting ``call_record_ttl``) from when it was first
written; a station's listing holds its newest :data:`MAX_STATION_CALLS` records. The
in-memory store also holds at most :data:`MAX_RECORDS` records in all (the oldest go first).
:mod:`services.redis_call_records` holds the Redis implementation.

Secrets never enter a record: :func:`redact` replaces the password of a 1.6 AuthorizationKey
or 2.0.1 BasicAuthPassword and the network profile's credentials with :data:`REDACTED`, so a
key with read scope cannot read a station's password back. :func:`redact_frame` applies the
same rules, and a few more, to any frame of either direction (the message log).
"""

from __future__ import annotations

import bisect
import copy
import enum
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote

import msgspec

from csms.envelope import Envelope, Kind
from services import rules
from services.models import Page

__all__ = [
    "CALL_CURSOR",
    "DEFAULT_TTL",
    "MAX_RECORDS",
    "MAX_STATION_CALLS",
    "REDACTED",
    "SECRET_ACTIONS",
    "SECRET_FIELD_PARTS",
    "CallQuery",
    "CallRecord",
    "CallRecordStore",
    "CallState",
    "MemoryCallRecordStore",
    "call_query",
    "check_final",
    "index_member",
    "message_id_of",
    "might_hold_secret",
    "outcome_record",
    "redact",
    "redact_frame",
    "resolved",
]

DEFAULT_TTL = 86_400
"""Seconds a record lives by default (``call_record_ttl``)."""
MAX_STATION_CALLS = 1000
"""Records a station's listing holds at most (the newest); older ones stay readable by id
until their lifetime ends."""
MAX_RECORDS = 10_000
"""Records the in-memory store holds at most; beyond it the oldest are forgotten."""
CALL_CURSOR = "calls"
REDACTED = "<redacted>"


class CallState(enum.StrEnum):
    """What became of a recorded call: ``pending`` or one of the final outcomes of
    :class:`operations.calls.Outcome` (same values)."""

    PENDING = "pending"
    """Sent (or about to be); no outcome yet."""
    RESULT = "result"
    ERROR = "error"
    TIMEOUT = "timeout"
    UNDELIVERED = "undelivered"
    OFFLINE = "offline"
    NO_OUTCOME = "no_outcome"
    """Still pending after its deadline: what became of it is unknown. Never stored, only
    read (see :func:`resolved`)."""


class CallRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One CSMS call: the request, and its outcome once known."""

    message_id: str
    station_id: str
    version: str
    action: str
    request: dict[str, Any] | None = None
    """The request payload sent, secrets redacted (see :func:`redact`)."""
    requested_at: float
    """Unix time the call was recorded; for a call first recorded at its outcome, when the
    gateway sent it (or when the outcome was made)."""
    deadline: float | None = None
    """Unix time after which a pending call reads as ``no_outcome``."""
    outcome: CallState = CallState.PENDING
    payload: dict[str, Any] | None = None
    error_code: str | None = None
    error_description: str | None = None
    error_details: Any = None
    sent_at: float | None = None
    """Unix time the gateway wrote the call to the station's socket, if it did."""
    finished_at: float | None = None


# --- the parts a store keeps apart: the request, written once, and the outcome ------------


class _Request(msgspec.Struct, kw_only=True, omit_defaults=True):
    station_id: str
    version: str
    action: str
    request: dict[str, Any] | None = None
    requested_at: float
    deadline: float | None = None


class _Outcome(msgspec.Struct, kw_only=True, omit_defaults=True):
    outcome: CallState = CallState.PENDING
    payload: dict[str, Any] | None = None
    error_code: str | None = None
    error_description: str | None = None
    error_details: Any = None
    sent_at: float | None = None
    finished_at: float | None = None


_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(_Request)
_outcome_decoder = msgspec.json.Decoder(_Outcome)


def encode_parts(record: CallRecord) -> tuple[bytes, bytes]:
    """The record's request part and outcome part, as stored (msgspec JSON each)."""
    request = _Request(
        station_id=record.station_id,
        version=record.version,
        action=record.action,
        request=record.request,
        requested_at=record.requested_at,
        deadline=record.deadline,
    )
    outcome = _Outcome(
        outcome=record.outcome,
        payload=record.payload,
        error_code=record.error_code,
        error_description=record.error_description,
        error_details=record.error_details,
        sent_at=record.sent_at,
        finished_at=record.finished_at,
    )
    return _encoder.encode(request), _encoder.encode(outcome)


def decode_parts(message_id: str, request: bytes | str, outcome: bytes | str | None) -> CallRecord:
    """The record stored as these parts (no outcome part: still pending)."""
    asked = _request_decoder.decode(request)
    known = _outcome_decoder.decode(outcome) if outcome else _Outcome()
    return CallRecord(
        message_id=message_id,
        station_id=asked.station_id,
        version=asked.version,
        action=asked.action,
        request=asked.request,
        requested_at=asked.requested_at,
        deadline=asked.deadline,
        outcome=known.outcome,
        payload=known.payload,
        error_code=known.error_code,
        error_description=known.error_description,
        error_details=known.error_details,
        sent_at=known.sent_at,
        finished_at=known.finished_at,
    )


# --- rules every implementation shares -----------------------------------------------------


def resolved(record: CallRecord, now: float) -> CallRecord:
    """The record as read at ``now``: pending past its deadline is ``no_outcome``."""
    if record.outcome is not CallState.PENDING or record.deadline is None or now < record.deadline:
        return record
    return msgspec.structs.replace(
        record,
        outcome=CallState.NO_OUTCOME,
        error_description="no outcome by the call's deadline: what became of it is unknown",
    )


def index_member(record: CallRecord) -> str:
    """The record's entry in its station's listing: ``{requested ms, 13 digits}:{id}`` with
    the id percent-encoded, so text order is time order (ties by id)."""
    return f"{time_key(record.requested_at)}:{rules.encode_id(record.message_id)}"


def message_id_of(member: str) -> str:
    """The message id of an index entry made by :func:`index_member`."""
    return unquote(member.partition(":")[2])


def time_key(unix_time: float) -> str:
    """Milliseconds as 13 digits: index entries before ``time_key(t)`` are older than t."""
    return f"{max(0, round(unix_time * 1000)):013d}"


@dataclass(frozen=True, slots=True)
class CallQuery:
    """A checked listing of one station's calls, newest first."""

    limit: int
    before: str | None = None
    """Index entry of the last record of the previous page (exclusive)."""
    action: str | None = None
    outcome: CallState | None = None

    def matches(self, record: CallRecord) -> bool:
        """``record`` (already :func:`resolved`) passes the filters."""
        return (self.action is None or record.action == self.action) and (
            self.outcome is None or record.outcome is self.outcome
        )


def call_query(
    cursor: str | None, limit: int, action: str | None, outcome: CallState | str | None
) -> CallQuery:
    """Validate the arguments of ``list_calls`` (``ValueError`` for a bad one)."""
    return CallQuery(
        limit=rules.check_limit(limit),
        before=rules.decode_cursor(CALL_CURSOR, cursor) if cursor is not None else None,
        action=action or None,
        outcome=CallState(outcome) if outcome is not None else None,
    )


def page_of(records: list[CallRecord], limit: int) -> Page[CallRecord]:
    """A page of up to ``limit`` of ``records`` (one more than ``limit``: more follow)."""
    return rules.page_of(records, limit, index_member, CALL_CURSOR)


def check_final(record: CallRecord) -> CallRecord:
    """``record`` when its outcome is final; ``ValueError`` for ``pending`` or
    ``no_outcome`` (an unknown outcome is no fact to store: the real one may still come)."""
    if record.outcome in (CallState.PENDING, CallState.NO_OUTCOME):
        raise ValueError(f"not a final outcome: {record.outcome.value}")
    return record


# --- what a record may hold ------------------------------------------------------------------

_SECRET_KEYS = frozenset({"authorizationkey"})
"""1.6 configuration keys whose value is a secret (compared case-insensitively)."""
_SECRET_VARIABLES = frozenset({"basicauthpassword"})
"""2.0.1 variable names whose value is a secret, whatever the component."""
_SECRET_PROFILE_FIELDS = {"apn": ("apnPassword", "simPin"), "vpn": ("password", "key")}
"""2.0.1 SetNetworkProfile connectionData parts and their secret fields."""


def _is_secret_name(value: object, names: frozenset[str]) -> bool:
    return isinstance(value, str) and value.casefold() in names


def redact(action: str, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` as a record may keep it: the secrets a call can carry replaced by
    :data:`REDACTED` (a copy; ``payload`` is left as it is).

    ChangeConfiguration of ``AuthorizationKey`` (1.6 password), SetVariables of
    ``BasicAuthPassword`` (2.0.1 password), SetNetworkProfile APN password and SIM PIN, VPN
    password and key.
    """
    if action == "ChangeConfiguration" and _is_secret_name(payload.get("key"), _SECRET_KEYS):
        return {**payload, "value": REDACTED} if "value" in payload else payload
    if action == "SetVariables":
        entries = payload.get("setVariableData")
        if not isinstance(entries, list) or not any(_secret_entry(e) for e in entries):
            return payload
        clean = copy.deepcopy(payload)
        for entry in clean["setVariableData"]:
            if _secret_entry(entry):
                entry["attributeValue"] = REDACTED
        return clean
    if action == "SetNetworkProfile" and isinstance(payload.get("connectionData"), dict):
        clean = copy.deepcopy(payload)
        for part, fields in _SECRET_PROFILE_FIELDS.items():
            section = clean["connectionData"].get(part)
            if isinstance(section, dict):
                for name in fields:
                    if name in section:
                        section[name] = REDACTED
        return clean
    return payload


def _secret_entry(entry: object) -> bool:
    if not isinstance(entry, dict):
        return False
    variable = entry.get("variable")
    return isinstance(variable, dict) and _is_secret_name(variable.get("name"), _SECRET_VARIABLES)


SECRET_FIELD_PARTS = (b"password", b"privatekey")  # spelled out in might_hold_secret
"""Any field whose name contains one of these (case-insensitively) holds a secret, in any
message: :func:`redact_frame` replaces its value whatever the action."""
SECRET_ACTIONS = frozenset(
    {
        "ChangeConfiguration",
        "GetConfiguration",
        "GetVariables",
        "NotifyReport",
        "SetNetworkProfile",
        "SetVariables",
    }
)
"""Actions whose frames can carry a secret under a field of another name (a variable's or a
configuration key's value)."""


def might_hold_secret(action: str | None, encoded: bytes) -> bool:
    """Whether a frame of ``action`` whose payload encodes to ``encoded`` needs
    :func:`redact_frame`: a cheap test, so frames without secrets (nearly all) cost no walk."""
    if action in SECRET_ACTIONS:
        return True
    lowered = encoded.lower()  # then plain substring scans: faster than a regex or a generator
    return b"password" in lowered or b"privatekey" in lowered


def redact_frame(action: str | None, payload: Any, *, answer: bool = False) -> Any:
    """Any OCPP payload (a Call's when not ``answer``, else its CallResult's) as a log may
    keep it: the rules of :func:`redact` for requests, the secret values of GetVariables and
    GetConfiguration answers and of NotifyReport, and every field named like a password or a
    private key, at any depth (a copy where something changed)."""
    if not isinstance(payload, dict):
        return payload
    if action is not None and not answer:
        payload = redact(action, payload)
    if action == "NotifyReport" and not answer:
        payload = _redact_entries(payload, "reportData", "variableAttribute", "value")
    elif action == "GetVariables" and answer:
        payload = _redact_entries(payload, "getVariableResult", None, "attributeValue")
    elif action == "GetConfiguration" and answer:
        keys = payload.get("configurationKey")
        if isinstance(keys, list) and any(
            isinstance(k, dict) and _is_secret_name(k.get("key"), _SECRET_KEYS) for k in keys
        ):
            payload = {
                **payload,
                "configurationKey": [
                    {**k, "value": REDACTED}
                    if isinstance(k, dict)
                    and _is_secret_name(k.get("key"), _SECRET_KEYS)
                    and "value" in k
                    else k
                    for k in keys
                ],
            }
    return _redact_fields(payload)


def _redact_entries(payload: dict[str, Any], entries: str, inner: str | None, field: str) -> Any:
    """``payload`` with ``field`` of each secret variable's entry (or of each item of the
    entry's ``inner`` list) replaced."""
    found = payload.get(entries)
    if not isinstance(found, list) or not any(_secret_entry(e) for e in found):
        return payload
    clean = copy.deepcopy(payload)
    for entry in clean[entries]:
        if not _secret_entry(entry):
            continue
        parts = entry.get(inner) if inner is not None else [entry]
        for part in parts if isinstance(parts, list) else []:
            if isinstance(part, dict) and field in part:
                part[field] = REDACTED
    return clean


def _redact_fields(value: Any) -> Any:
    """``value`` with every field named like a secret (:data:`SECRET_FIELD_PARTS`) replaced;
    the same object when there is none."""
    if isinstance(value, dict):
        changed = False
        clean: dict[str, Any] = {}
        for name, item in value.items():
            lowered = name.lower().encode() if isinstance(name, str) else b""
            if any(part in lowered for part in SECRET_FIELD_PARTS):
                clean[name] = REDACTED
                changed = changed or item != REDACTED
                continue
            clean[name] = new = _redact_fields(item)
            changed = changed or new is not item
        return clean if changed else value
    if isinstance(value, list):
        items = [_redact_fields(item) for item in value]
        return items if any(n is not o for n, o in zip(items, value, strict=True)) else value
    return value


_FINAL_KINDS = {
    Kind.RESULT: CallState.RESULT,
    Kind.ERROR: CallState.ERROR,
    Kind.TIMEOUT: CallState.TIMEOUT,
    Kind.UNDELIVERED: CallState.UNDELIVERED,
}


def outcome_record(envelope: Envelope) -> CallRecord | None:
    """The record of the outcome a gateway published (a station's answer to a CSMS call, or
    the gateway's timeout / undelivered), with the request taken from the original call it
    carries; None for anything else (a station Call, an answer without its call)."""
    state = _FINAL_KINDS.get(envelope.kind)
    request = envelope.request
    if state is None or request is None:
        return None
    return CallRecord(
        message_id=request.message_id,
        station_id=envelope.station,
        version=envelope.version,
        action=request.action,
        request=redact(request.action, request.payload),
        requested_at=request.sent_at or envelope.at,
        outcome=state,
        payload=envelope.payload if isinstance(envelope.payload, dict) else None,
        error_code=envelope.error_code,
        error_description=envelope.error_description,
        error_details=envelope.error_details,
        sent_at=request.sent_at,
        finished_at=envelope.at,
    )


# --- the interface ---------------------------------------------------------------------------


@runtime_checkable
class CallRecordStore(Protocol):
    """Where call records live (shared by every API replica and manager)."""

    async def begin(self, record: CallRecord) -> None:
        """Record a call about to be published (outcome ``pending``). Never replaces a
        record that exists."""
        ...

    async def finish(self, record: CallRecord) -> None:
        """Record a call's final outcome (see the module docstring): keeps the stored request
        data and a final outcome already stored; creates the record when there is none."""
        ...

    async def get(self, message_id: str) -> CallRecord | None:
        """The record (:func:`resolved` now), None when unknown or expired."""
        ...

    async def list_calls(
        self,
        station_id: str,
        *,
        cursor: str | None = None,
        limit: int = 100,
        action: str | None = None,
        outcome: CallState | None = None,
    ) -> Page[CallRecord]:
        """The station's records, newest first, :func:`resolved` now and filtered;
        ``ValueError`` for a bad cursor or limit."""
        ...


# --- in memory -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stored:
    request: bytes
    outcome: bytes
    final: bool
    station_id: str
    member: str
    expires_at: float


class MemoryCallRecordStore:
    """:class:`CallRecordStore` in dicts (embedded default, tests): at most ``max_records``
    records (the oldest go first), each for ``ttl`` seconds of ``clock`` (Unix time)."""

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        max_records: int = MAX_RECORDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ttl = ttl
        self._max_records = max_records
        self._clock = clock
        self._records: OrderedDict[str, _Stored] = OrderedDict()
        """By message id, oldest first (so also in expiry order)."""
        self._index: dict[str, list[str]] = {}
        """Station id -> its index entries, ascending."""

    async def begin(self, record: CallRecord) -> None:
        self._write(record, replace_pending=False)

    async def finish(self, record: CallRecord) -> None:
        self._write(check_final(record), replace_pending=True)

    async def get(self, message_id: str) -> CallRecord | None:
        now = self._clock()
        self._expire(now)
        stored = self._records.get(message_id)
        if stored is None:
            return None
        return resolved(decode_parts(message_id, stored.request, stored.outcome), now)

    async def list_calls(
        self,
        station_id: str,
        *,
        cursor: str | None = None,
        limit: int = 100,
        action: str | None = None,
        outcome: CallState | None = None,
    ) -> Page[CallRecord]:
        query = call_query(cursor, limit, action, outcome)
        now = self._clock()
        self._expire(now)
        members = self._index.get(station_id, [])
        end = bisect.bisect_left(members, query.before) if query.before else len(members)
        found: list[CallRecord] = []
        for member in reversed(members[:end]):
            message_id = message_id_of(member)
            stored = self._records.get(message_id)
            if stored is None:
                continue
            record = resolved(decode_parts(message_id, stored.request, stored.outcome), now)
            if query.matches(record):
                found.append(record)
                if len(found) > query.limit:
                    break
        return page_of(found, query.limit)

    def _write(self, record: CallRecord, *, replace_pending: bool) -> None:
        now = self._clock()
        self._expire(now)
        request, outcome = encode_parts(record)
        final = record.outcome is not CallState.PENDING
        stored = self._records.get(record.message_id)
        if stored is None:
            member = index_member(record)
            self._records[record.message_id] = _Stored(
                request, outcome, final, record.station_id, member, now + self._ttl
            )
            members = self._index.setdefault(record.station_id, [])
            bisect.insort(members, member)
            if len(members) > MAX_STATION_CALLS:
                del members[0]
            while len(self._records) > self._max_records:
                self._forget(next(iter(self._records)))
        elif replace_pending and not stored.final:
            stored.outcome, stored.final = outcome, True

    def _expire(self, now: float) -> None:
        while self._records:
            oldest = next(iter(self._records.values()))
            if oldest.expires_at > now:
                return
            self._forget(next(iter(self._records)))

    def _forget(self, message_id: str) -> None:
        stored = self._records.pop(message_id)
        members = self._index.get(stored.station_id)
        if members is None:
            return
        at = bisect.bisect_left(members, stored.member)
        if at < len(members) and members[at] == stored.member:
            del members[at]
        if not members:
            del self._index[stored.station_id]
