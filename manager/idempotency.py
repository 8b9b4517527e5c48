"""Idempotency keys and answer replay for station Calls.

A station (or the broker, QoS 1 redelivers) may send the same Call twice. The manager claims a
key in the shared :class:`~services.interfaces.IdempotencyStore` before doing the work, so the
second copy, on whichever instance it lands, gets the stored answer instead of a second
transaction. The key covers station, message id, action and a hash of the canonical payload:
a station that reuses a message id for a *different* Call is not mistaken for a duplicate.

The claim, the handler's work and the stored answer make one
:class:`~services.interfaces.CallUnit`: the Redis store's fetches :func:`read_ahead` with the
claim and stores the handler's writes with the answer; :class:`PlainCallUnit` does each step
on its own for any other store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from csms.envelope import Envelope, decode_envelope
from csms.topics import encode_station
from services.interfaces import IdempotencyStore, ReadAhead

__all__ = [
    "PlainCallUnit",
    "claim_owner",
    "idempotency_key",
    "payload_digest",
    "read_ahead",
    "replay",
]


def payload_digest(version: str, payload: object) -> str:
    """Hash of the payload's canonical JSON (keys sorted), with the OCPP version."""
    canonical = msgspec.json.encode([version, payload], order="sorted")
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


def idempotency_key(envelope: Envelope) -> str:
    """``{station}/{message_id}/{action}/{digest}``; each part percent-encoded so no two
    Calls share a key by way of a ``/`` inside an id."""
    return "/".join(
        (
            encode_station(envelope.station),
            encode_station(envelope.message_id),
            encode_station(envelope.action or ""),
            payload_digest(envelope.version, envelope.payload),
        )
    )


def replay(stored: bytes, request: Envelope) -> Envelope:
    """The stored answer re-addressed to ``request``'s connection (a retry may arrive on a
    new socket, possibly through another gateway). Raises ``msgspec`` errors when corrupt."""
    answer = decode_envelope(stored)
    return msgspec.structs.replace(
        answer,
        gateway=request.gateway,
        connection=request.connection,
        meta=request.meta,
        at=0.0,
    )


def claim_owner(envelope: Envelope, instance_id: str) -> str:
    """Who holds a claim: this delivery attempt (the gateway's connection and the time it
    published the Call) on this worker instance.

    A station's retry is a new attempt and a copy redelivered to another instance has another
    owner: both take over a claim left behind (see ``IdempotencyStore.claim``), so a claim of
    a crashed worker or one a stalled store applied late never swallows them.
    """
    return f"{envelope.connection or ''}@{envelope.at!r}|{instance_id}"


def _at(value: object, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _text_at(value: object, key: str) -> str | None:
    found = _at(value, key)
    return found if isinstance(found, str) and found else None


def read_ahead(envelope: Envelope) -> ReadAhead:
    """What the handler of the Call ``envelope`` is about to read, named from its payload
    (the hot-path handlers of both versions, see ``manager/common``): the station record
    (the registration check), the token presented, the transaction a message names and its
    seqNo, the station's active transactions where a start may supersede one, the token's
    where ConcurrentTx is checked, and a new 1.6 transactionId for StartTransaction. A read
    not named here still happens, one round trip later."""
    payload: Any = envelope.payload
    station = envelope.station
    token = _text_at(payload, "idTag") or _text_at(_at(payload, "idToken"), "idToken")
    tokens = (token,) if token else ()
    if envelope.action == "TransactionEvent":
        tx = _text_at(_at(payload, "transactionInfo"), "transactionId")
        seq_no = _at(payload, "seqNo")
        started = _at(payload, "eventType") == "Started"
        live = started and not _at(payload, "offline")
        return ReadAhead(
            station,
            tokens=tokens,
            transactions=(tx,) if tx else (),
            seq_no=(tx, seq_no) if tx and isinstance(seq_no, int) else None,
            active=started,
            token_transactions=tokens if live else (),
        )
    if envelope.action == "StartTransaction":
        return ReadAhead(
            station, tokens=tokens, active=True, token_transactions=tokens, new_transaction_id=True
        )
    number = _at(payload, "transactionId")  # 1.6 MeterValues, StopTransaction (-1: see there)
    named = isinstance(number, int) and not isinstance(number, bool) and number >= 0
    return ReadAhead(station, tokens=tokens, transactions=(str(number),) if named else ())


class PlainCallUnit:
    """A :class:`~services.interfaces.CallUnit` over any
    :class:`~services.interfaces.IdempotencyStore`, each step one call of its own: the
    handler's writes are made as it goes, so :meth:`complete` only stores the answer (a
    failure is reported through ``bookkeeping``, never raised: the work is done)."""

    def __init__(
        self,
        store: IdempotencyStore,
        key: str,
        owner: str,
        ttl: float,
        *,
        touch: Callable[[], Awaitable[None]],
        bookkeeping: Callable[[Awaitable[None], str], Awaitable[None]],
    ) -> None:
        self._store = store
        self._key = key
        self._owner = owner
        self._ttl = ttl
        self._touch = touch
        self._bookkeeping = bookkeeping

    async def __aenter__(self) -> PlainCallUnit:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def claim(self) -> bytes | bool:
        claim = await self._store.claim(self._key, self._owner, self._ttl)
        await self._touch()
        return claim

    async def complete(self, answer: bytes, ttl: float) -> bool:
        stored = self._store.complete(self._key, answer, ttl)
        await self._bookkeeping(stored, "idempotency complete failed")
        return True

    async def release(self) -> None:
        await self._store.release(self._key, self._owner)
