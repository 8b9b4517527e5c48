"""Station password rotation (HTTP Basic auth, security profiles 1 and 2).

- OCPP 2.0.1 A01 "Update Charging Station Password for HTTP Basic Authentication":
  SetVariables ``SecurityCtrlr.BasicAuthPassword`` (attributeType Actual).
- OCPP 1.6 Security Whitepaper: ChangeConfiguration ``AuthorizationKey``, whose value is the
  password's octets hex-encoded (:func:`csms.credentials.authorization_key`).

How a rotation flows, with no instance remembering anything:

1. :func:`rotate_password` generates a password valid for the station's OCPP version, records
   its hash as the station's *pending* password
   (:meth:`StationRegistry.set_pending_password_hash`) and sends the call through the
   :class:`~manager.call_maker.CallMaker`, marked in ``meta`` as a rotation (:data:`PURPOSE` =
   :data:`ROTATION`). Admission accepts the pending password besides the current one: a 1.6
   station (security whitepaper) answers Accepted and reconnects with the new key at once,
   before any manager has stored its answer. The pending hash serves admission only.
2. The gateway attaches that request to the station's answer, so whichever manager receives it
   runs the version's result handler, which calls :func:`apply_result`: when the station
   answered Accepted for the password, the password is read back from the original request
   and its hash (the pending one when it matches) replaces the registry's
   (:meth:`StationRegistry.set_password_hash`, which clears that pending hash). Rejected,
   RebootRequired, NotSupported, a CallError, or a call never written to the station leave
   the current hash unchanged, clear the pending hash if it is still this rotation's (a late
   answer to an older rotation leaves a newer one pending) and are logged as warnings.
3. The station keeps its connection; the new password is checked from its next connection on.

Whatever outcome is lost, nobody is locked out:

- no answer in time, or the connection closed after the call was sent: the station may have
  taken the password, so its hash stays pending (admissible) instead of being cleared;
- a manager that died with the answer, or an answer never published: same, nothing clears it;
- a new rotation while one is pending moves the older hash to the station's *unsettled*
  hashes (``StationRecord.unsettled_password_hashes``), still admissible, instead of
  discarding it;
- a login with a pending or unsettled password proves the station uses it: the gateway says
  so in its connection event and the registry makes it current
  (:meth:`StationRegistry.promote_password_hash`), settling every other rotation.

An accepted password change sent without the rotation mark (another tool using the CallMaker)
is stored as well: the station will use that password, and a registry still holding the old
hash would lock it out.

Passwords and AuthorizationKey values are never logged; the SetVariables and
ChangeConfiguration result handlers log :data:`REDACTED` in their place.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

import structlog

from csms.credentials import (
    authorization_key,
    check_password,
    generate_password,
    hash_password,
    password_from_authorization_key,
    verify_password,
)
from csms.envelope import OriginalCall
from csms.versions import PasswordStyle, spec
from manager.call_maker import CallMaker
from manager.context import ResultContext
from services.interfaces import StationRegistry, StoreUnavailable

__all__ = [
    "AUTHORIZATION_KEY",
    "BASIC_AUTH_PASSWORD",
    "PURPOSE",
    "REDACTED",
    "ROTATION",
    "SECURITY_COMPONENT",
    "Rotation",
    "RotationRefused",
    "apply_result",
    "is_rotation",
    "is_secret_key",
    "is_secret_variable",
    "password_in_request",
    "rotate_password",
    "rotation_call",
    "rotation_status",
    "rotation_version",
    "sets_password",
]

PURPOSE = "purpose"
"""``meta`` key of the call's purpose."""
ROTATION = "password-rotation"
"""``meta[PURPOSE]`` of a password rotation."""

SECURITY_COMPONENT = "SecurityCtrlr"
BASIC_AUTH_PASSWORD = "BasicAuthPassword"
AUTHORIZATION_KEY = "AuthorizationKey"
REDACTED = "<redacted>"

_SET_VARIABLES = "SetVariables"
_CHANGE_CONFIGURATION = "ChangeConfiguration"
_ACCEPTED = "Accepted"
_STORE_ATTEMPTS = 5
"""Tries to store an accepted password before giving up: the station already uses it."""

_log = structlog.get_logger("manager.password_rotation")


class RotationRefused(Exception):
    """The station's record does not allow a rotation now (unknown, offline, profile 3...)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Rotation:
    """A rotation call that was sent: what to wait for."""

    station_id: str
    version: str
    action: str
    message_id: str
    password: str = dataclasses.field(repr=False)
    """The new password (for the caller to check the registry against; never log it)."""


def _is_v16(version: str) -> bool:
    """True when the version's stations get their password as a 1.6 AuthorizationKey."""
    return spec(version).password is PasswordStyle.AUTHORIZATION_KEY


def is_secret_key(key: object) -> bool:
    """True for a 1.6 configuration key whose value is a secret (``AuthorizationKey``;
    compared case-insensitively, as many charge points treat keys)."""
    return isinstance(key, str) and key.casefold() == AUTHORIZATION_KEY.casefold()


def is_secret_variable(variable: object) -> bool:
    """True for a 2.0.1 variable name whose value is a secret (``BasicAuthPassword``,
    whatever the component)."""
    return isinstance(variable, str) and variable.casefold() == BASIC_AUTH_PASSWORD.casefold()


def rotation_call(version: str, password: str) -> tuple[str, dict[str, Any]]:
    """The action and payload that give a station of ``version`` the password ``password``.

    ``ValueError`` when the password breaks the version's rules (length, characters).
    """
    if _is_v16(version):
        return _CHANGE_CONFIGURATION, {
            "key": AUTHORIZATION_KEY,
            "value": authorization_key(password),
        }
    check_password(password, version=version)
    return _SET_VARIABLES, {
        "setVariableData": [
            {
                "attributeType": "Actual",
                "attributeValue": password,
                "component": {"name": SECURITY_COMPONENT},
                "variable": {"name": BASIC_AUTH_PASSWORD},
            }
        ]
    }


def _is_password_entry(entry: dict[str, Any]) -> bool:
    component, variable = entry.get("component") or {}, entry.get("variable") or {}
    return (
        component.get("name") == SECURITY_COMPONENT
        and component.get("instance") is None
        and component.get("evse") is None
        and variable.get("name") == BASIC_AUTH_PASSWORD
        and variable.get("instance") is None
        and entry.get("attributeType", "Actual") == "Actual"
    )


def password_in_request(version: str, request: OriginalCall) -> str | None:
    """The password a CSMS call gives the station, None when it sets none (or is ambiguous).

    ``ValueError`` for a 1.6 AuthorizationKey that is not 16-20 octets of hex.
    """
    payload = request.payload
    if _is_v16(version):
        if request.action != _CHANGE_CONFIGURATION or not is_secret_key(payload.get("key")):
            return None
        return password_from_authorization_key(str(payload.get("value", "")))
    if request.action != _SET_VARIABLES:
        return None
    entries = [e for e in payload.get("setVariableData") or () if _is_password_entry(e)]
    if len(entries) != 1:
        return None
    value = entries[0].get("attributeValue")
    return value if isinstance(value, str) else None


def rotation_status(version: str, answer: dict[str, Any]) -> str | None:
    """The station's status for the password in its CallResult payload (None if absent)."""
    if _is_v16(version):
        status = answer.get("status")
        return status if isinstance(status, str) else None
    for result in answer.get("setVariableResult") or ():
        if _is_password_entry(result):
            status = result.get("attributeStatus")
            return status if isinstance(status, str) else None
    return None


def sets_password(version: str, request: OriginalCall) -> bool:
    """True when the CSMS call changes the station's Basic auth password (or tries to)."""
    payload = request.payload
    if _is_v16(version):
        return request.action == _CHANGE_CONFIGURATION and is_secret_key(payload.get("key"))
    return request.action == _SET_VARIABLES and any(
        is_secret_variable((entry.get("variable") or {}).get("name"))
        for entry in payload.get("setVariableData") or ()
    )


def is_rotation(request: OriginalCall) -> bool:
    """True when the call was sent as a password rotation."""
    return request.meta.get(PURPOSE) == ROTATION


async def rotation_version(stations: StationRegistry, station_id: str) -> str:
    """The OCPP version to rotate ``station_id``'s password with.

    Raises :class:`RotationRefused` when the station is unknown, uses a client certificate
    (profile 3: no password), never connected (version unknown) or is offline (a call
    published for a station no gateway holds reaches no one).
    """
    record = await stations.get(station_id)
    if record is None:
        raise RotationRefused(f"station {station_id} is not in the registry")
    if record.security_profile == 3:
        raise RotationRefused(
            f"station {station_id} uses security profile 3 (client certificate): "
            "it has no password to rotate"
        )
    if record.ocpp_version is None:
        raise RotationRefused(
            f"station {station_id} has never connected: its OCPP version is unknown"
        )
    if not record.online:
        raise RotationRefused(
            f"station {station_id} is offline: a password is rotated while it is connected"
        )
    return record.ocpp_version


async def rotate_password(
    calls: CallMaker,
    stations: StationRegistry,
    station_id: str,
    version: str,
    *,
    password: str | None = None,
    meta: dict[str, str] | None = None,
    reply_to: str | None = None,
) -> Rotation:
    """Send ``station_id`` a new password (generated unless given) for ``version``.

    The new hash is recorded as pending first, so the station is admitted with the new
    password as soon as it switches; the current hash changes only once the station accepted
    (see :func:`apply_result`), unless ``reply_to`` sends the answer elsewhere, in which case
    the caller must apply it. Raises ``ValueError`` for a password the version does not
    allow, :class:`RotationRefused` when the station has no record, and what
    :meth:`CallMaker.call` and the registry raise.
    """
    new_password = password if password is not None else generate_password(version=version)
    action, payload = rotation_call(version, new_password)
    # scrypt costs tens of milliseconds of CPU: keep it off the event loop.
    pending_hash = await asyncio.to_thread(hash_password, new_password)
    if not await stations.set_pending_password_hash(station_id, pending_hash):
        raise RotationRefused(f"station {station_id} is not in the registry")
    try:
        message_id = await calls.call(
            station_id,
            version,
            action,
            payload,
            meta={**(meta or {}), PURPOSE: ROTATION},
            reply_to=reply_to,
        )
    except BaseException:
        # Never sent: no answer will come to clear it.
        with contextlib.suppress(StoreUnavailable):
            await stations.set_pending_password_hash(station_id, None, replacing=pending_hash)
        raise
    _log.info(
        "password_rotation_sent",
        station=station_id,
        version=version,
        action=action,
        message_id=message_id,
    )
    return Rotation(station_id, version, action, message_id, new_password)


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
