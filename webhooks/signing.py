"""Signatures of webhook deliveries: made here, checked by receivers.

Every delivery carries ``X-CSMS-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>``, the HMAC
of ``"<t>.<raw body>"`` keyed with the subscription's secret. Receivers check it with
:func:`verify_signature` over the raw bytes of the body (before any JSON parsing), and reject
old timestamps so a captured request cannot be replayed later. This module needs only the
standard library: copy it into a receiver as it is (docs/events.md shows the same function).
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["SIGNATURE_HEADER", "sign", "signature_header", "verify_signature"]

SIGNATURE_HEADER = "X-CSMS-Signature"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<body>"`` with ``secret``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-CSMS-Signature`` value for ``body`` signed now (or at ``timestamp``)."""
    at = int(time.time()) if timestamp is None else timestamp
    return f"t={at},v1={sign(secret, at, body)}"


def verify_signature(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
    """True when ``header`` (X-CSMS-Signature) signs ``body`` with ``secret`` and its
    timestamp is within ``tolerance`` seconds of now."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    message = str(timestamp).encode() + b"." + body
    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))
