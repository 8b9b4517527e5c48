"""Idempotency keys and answer replay for station Calls.

A station (or the broker, QoS 1 redelivers) may send the same Call twice. The manager claims a
key in the shared :class:`~services.interfaces.IdempotencyStore` before doing the work, so the
second copy, on whichever instance it lands, gets the stored answer instead of a second
transaction. The key covers station, message id, action and a hash of the canonical payload:
a station that reuses a message id for a *different* Call is not mistaken for a duplicate.
"""

from __future__ import annotations

import hashlib

import msgspec

from csms.envelope import Envelope, decode_envelope
from csms.topics import encode_station

__all__ = [
    "claim_owner",
    "idempotency_key",
    "payload_digest",
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
