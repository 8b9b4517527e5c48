"""Applying a station's answer to a password change (the result side of a rotation).

The rotation itself (generating the password, recording it as pending, sending the call) is
an operation: :mod:`operations.password`. This module runs in the manager that receives the
station's answer, whichever one it is, and decides what the registry keeps. See
:mod:`operations.password` for the whole flow and why a lost outcome locks nobody out.
"""

from __future__ import annotations

import asyncio

from csms.credentials import hash_password, verify_password
from manager.context import ResultContext
from operations.password import (
    is_rotation,
    password_in_request,
    rotation_status,
)
from services.interfaces import StoreUnavailable

__all__ = ["apply_result", "outcome_unknown"]

_ACCEPTED = "Accepted"
_STORE_ATTEMPTS = 5
"""Tries to store an accepted password before giving up: the station already uses it."""


async def apply_result(ctx: ResultContext) -> bool:
    """Store the new password's hash if the station accepted it; True when stored.

    For the answer to a call that sets a password (rotation or not). Everything but
    Accepted leaves the current hash unchanged, clears this rotation's pending hash and is a
    warning.
    """
    rotation = is_rotation(ctx.request)
    log = ctx.log.bind(rotation=rotation)
    if not ctx.ok or ctx.payload is None:
        if outcome_unknown(ctx):
            # The station may have taken the password: it stays admissible until the
            # station proves which one it uses (see the module docstring).
            log.warning(
                "password_change_unconfirmed",
                reason="no answer in time" if ctx.timed_out else "connection closed",
                consequence="the new password stays accepted at login besides the current "
                "one; the first login with it makes it current",
            )
            return False
        await _clear_pending(ctx)
        log.warning(
            "password_not_changed",
            reason="no answer in time"
            if ctx.timed_out
            else "call not delivered"
            if ctx.undelivered
            else "error answer",
            error_code=ctx.error_code,
            error_description=ctx.error_description,
            timed_out=ctx.timed_out,
            undelivered=ctx.undelivered,
        )
        return False
    status = rotation_status(ctx.version, ctx.payload)
    if status != _ACCEPTED:
        await _clear_pending(ctx)
        log.warning(
            "password_not_changed",
            reason="station did not accept",
            status=status,
            note="the registry keeps the current password"
            + (
                "; the station applies the new one only after a reboot"
                if status == "RebootRequired"
                else ""
            ),
        )
        return False
    try:
        password = password_in_request(ctx.version, ctx.request)
    except ValueError as exc:
        log.warning("password_not_changed", reason=f"request unusable: {exc}")
        return False
    if password is None:
        log.warning("password_not_changed", reason="no single password in the request")
        return False
    # The pending hash, when it is this password's, becomes current (and stops being
    # pending); otherwise (an unmarked change, a newer rotation pending) hash it afresh.
    current, password_hash = await _hashes_of(ctx, password)
    if current:
        # The station logged in with it before its answer arrived, which promoted it.
        log.info("password_changed", applies="already current: the station logged in with it")
        return True
    if password_hash is None:
        # scrypt costs tens of milliseconds of CPU: keep it off the event loop.
        password_hash = await asyncio.to_thread(hash_password, password)
    stored = await _store(ctx, password_hash)
    if not stored:
        log.warning("password_not_changed", reason="station not in the registry")
        return False
    log.info("password_changed", applies="from the station's next connection")
    return True


def outcome_unknown(ctx: ResultContext) -> bool:
    """True when the station may have applied the call although no answer says so: it timed
    out, or the connection closed after the call was written to it."""
    return ctx.timed_out or (ctx.undelivered is not None and ctx.request.sent_at is not None)


async def _hashes_of(ctx: ResultContext, password: str) -> tuple[bool, str | None]:
    """From one read of the registry: whether the current hash already checks ``password``,
    else the pending hash when it does (None: the caller hashes the password itself, also
    when the registry cannot be read)."""
    try:
        record = await ctx.services.stations.get(ctx.station_id)
    except StoreUnavailable:
        return False, None
    if record is None:
        return False, None
    for candidate, is_current in (
        (record.password_hash, True),
        (record.pending_password_hash, False),
    ):
        if candidate is not None and await asyncio.to_thread(verify_password, password, candidate):
            return is_current, None if is_current else candidate
    return False, None


async def _pending_hash_of(ctx: ResultContext, password: str) -> str | None:
    """The station's pending hash when it checks ``password``, else None (also when the
    registry cannot be read: the caller then hashes the password itself)."""
    try:
        record = await ctx.services.stations.get(ctx.station_id)
    except StoreUnavailable:
        return None
    pending = record.pending_password_hash if record is not None else None
    if pending is None or not await asyncio.to_thread(verify_password, password, pending):
        return None
    return pending


async def _clear_pending(ctx: ResultContext) -> None:
    """Clear the pending hash if it is still the one of the password in this request: a
    password the station did not take must not keep admitting it."""
    try:
        password = password_in_request(ctx.version, ctx.request)
    except ValueError:
        return
    if password is None:
        return
    try:
        pending = await _pending_hash_of(ctx, password)
        if pending is not None:
            await ctx.services.stations.set_pending_password_hash(
                ctx.station_id, None, replacing=pending
            )
    except StoreUnavailable as exc:
        ctx.log.error(
            "pending_password_not_cleared",
            error=str(exc),
            consequence="the refused password is still accepted at admission until the next "
            "rotation or 'csms station add --password'",
        )


async def _store(ctx: ResultContext, password_hash: str) -> bool:
    """Store the hash, retrying a short store outage: the station already switched to the new
    password, so losing this write locks it out at its next connection."""
    delay = 0.2
    for attempt in range(1, _STORE_ATTEMPTS + 1):
        try:
            return await ctx.services.stations.set_password_hash(ctx.station_id, password_hash)
        except StoreUnavailable as exc:
            if attempt == _STORE_ATTEMPTS:
                ctx.log.error(
                    "password_not_stored",
                    error=str(exc),
                    consequence="the station accepted a new password the registry does not "
                    "hold: it will be refused at its next connection; rotate again or set a "
                    "password with 'csms station add --password'",
                )
                raise
            await asyncio.sleep(delay)
            delay *= 2
    return False  # not reached
