"""Station password rotation (HTTP Basic auth, security profiles 1 and 2).

- OCPP 2.0.1 A01 "Update Charging Station Password for HTTP Basic Authentication":
  SetVariables ``SecurityCtrlr.BasicAuthPassword`` (attributeType Actual).
- OCPP 1.6 Security Whitepaper: ChangeConfiguration ``AuthorizationKey``, whose value is the
  password's octets hex-encoded (:func:`csms.credentials.authorization_key`).

How a rotation flows, with no instance remembering anything:

1. :func:`rotate_password` generates a password valid for the station's OCPP version, records
   its hash as the station's *pending* password
   (:meth:`StationRegistry.set_pending_password_hash`) and sends the call through the
   :class:`~operations.call_maker.CallMaker`, marked in ``meta`` as a rotation (:data:`PURPOSE` =
   :data:`ROTATION`). Admission accepts the pending password besides the current one: a 1.6
   station (security whitepaper) answers Accepted and reconnects with the new key at once,
   before any manager has stored its answer. The pending hash serves admission only.
2. The gateway attaches that request to the station's answer, so whichever manager receives it
   runs the version's result handler, which calls
   :func:`manager.password_results.apply_result`: when the station answered Accepted for
   the password, the password is read back from the original request and its hash (the
   pending one when it matches) replaces the registry's
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
import enum
from collections.abc import Callable
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
from csms.errors import InvalidRequest
from csms.versions import PasswordStyle, spec
from operations.call_maker import CallMaker
from operations.calls import CallOutcome, CallSender, Outcome
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
    "RotationResult",
    "RotationStatus",
    "is_rotation",
    "is_secret_key",
    "is_secret_variable",
    "password_in_request",
    "rotate_and_confirm",
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
_ACCEPTED = "Accepted"

_SET_VARIABLES = "SetVariables"
_CHANGE_CONFIGURATION = "ChangeConfiguration"

_log = structlog.get_logger("operations.password")


class RotationRefused(InvalidRequest):
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
    (see :func:`manager.password_results.apply_result`; the gateway hands every outcome to
    the managers, also when ``reply_to`` sends a copy to a waiting caller). Raises
    ``ValueError`` for a password the version does not allow, :class:`RotationRefused` when
    the station has no record, and what :meth:`CallMaker.call` and the registry raise.
    """
    new_password, action, payload, pending_hash = await _prepare(
        stations, station_id, version, password
    )
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
        await _forget(stations, station_id, pending_hash)
        raise
    _log.info(
        "password_rotation_sent",
        station=station_id,
        version=version,
        action=action,
        message_id=message_id,
    )
    return Rotation(station_id, version, action, message_id, new_password)


class RotationStatus(enum.Enum):
    """How a rotation that was waited for ended (see :func:`rotate_and_confirm`)."""

    STORED = "stored"
    """The station accepted and the registry holds the new password."""
    REFUSED = "refused"
    """The station did not take it (its answer, or the call was not delivered)."""
    UNKNOWN = "unknown"
    """No outcome in time, or accepted but not stored in time: the new password stays
    admissible until the station proves which one it uses."""


@dataclasses.dataclass(frozen=True, slots=True)
class RotationResult:
    status: RotationStatus
    rotation: Rotation
    reason: str
    """Why, for people (never the password)."""


async def rotate_and_confirm(
    sender: CallSender,
    stations: StationRegistry,
    station_id: str,
    *,
    wait: float,
    progress: Callable[[str], None] | None = None,
) -> RotationResult:
    """Rotate a connected station's password and wait until the registry holds it.

    The call goes through ``sender`` (its outcome comes back to this caller); a manager
    applies the station's answer as for any rotation, and this waits, within ``wait``
    seconds in all, until the registry shows the new hash. Raises :class:`RotationRefused`
    when nothing can be sent (unknown, offline or profile-3 station, no gateway holds it),
    and what the bus and the registry raise.
    """
    say = progress or (lambda _message: None)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    version = await rotation_version(stations, station_id)
    before = await stations.get(station_id)
    old_hash = before.password_hash if before is not None else None
    new_password, action, payload, pending_hash = await _prepare(stations, station_id, version)
    say(f"sending {action} to {station_id} ({version}); waiting for its answer")
    try:
        outcome = await sender.send(
            station_id,
            version,
            action,
            payload,
            timeout=max(0.1, deadline - loop.time()),
            meta={PURPOSE: ROTATION},
        )
    except BaseException:
        await _forget(stations, station_id, pending_hash)
        raise
    rotation = Rotation(station_id, version, action, outcome.message_id or "", new_password)
    if outcome.outcome is Outcome.OFFLINE:
        await _forget(stations, station_id, pending_hash)
        raise RotationRefused(f"station {station_id} is not connected to any gateway")
    refusal = _refusal(version, outcome)
    if outcome.outcome is Outcome.NO_OUTCOME:
        return RotationResult(
            RotationStatus.UNKNOWN, rotation, f"no answer from {station_id} within {wait:g} s"
        )
    if refusal is not None:
        status = RotationStatus.UNKNOWN if outcome.outcome is Outcome.TIMEOUT else None
        return RotationResult(status or RotationStatus.REFUSED, rotation, refusal)
    say(f"{station_id} accepted; waiting for a manager to store the new password hash")
    if await _hash_stored(stations, station_id, new_password, old_hash, deadline):
        return RotationResult(RotationStatus.STORED, rotation, "stored")
    return RotationResult(
        RotationStatus.UNKNOWN,
        rotation,
        f"{station_id} accepted the new password but the registry did not show it within "
        f"{wait:g} s: check that managers are running",
    )


async def _prepare(
    stations: StationRegistry, station_id: str, version: str, password: str | None = None
) -> tuple[str, str, dict[str, Any], str]:
    """The new password (generated unless given), the call that gives it to the station, and
    its hash, already recorded as pending so the station is admitted as soon as it switches."""
    new_password = password if password is not None else generate_password(version=version)
    action, payload = rotation_call(version, new_password)
    # scrypt costs tens of milliseconds of CPU: keep it off the event loop.
    pending_hash = await asyncio.to_thread(hash_password, new_password)
    if not await stations.set_pending_password_hash(station_id, pending_hash):
        raise RotationRefused(f"station {station_id} is not in the registry")
    return new_password, action, payload, pending_hash


async def _forget(stations: StationRegistry, station_id: str, pending_hash: str) -> None:
    """Nothing was sent: no answer will come to clear the pending hash, and it must not stay
    admissible."""
    with contextlib.suppress(StoreUnavailable):
        await stations.set_pending_password_hash(station_id, None, replacing=pending_hash)


def _refusal(version: str, outcome: CallOutcome) -> str | None:
    """Why the station did not take the password, None when it accepted it."""
    if outcome.outcome is Outcome.RESULT:
        status = rotation_status(version, outcome.payload or {})
        if status == _ACCEPTED:
            return None
        if status == "RebootRequired":
            return "it answered RebootRequired (it would switch only after a reboot)"
        return f"it answered {status or 'without a status for the password'}"
    if outcome.outcome is Outcome.ERROR:
        return f"it answered CallError {outcome.error_code}: {outcome.error_description or ''}"
    if outcome.outcome is Outcome.TIMEOUT:
        return "it did not answer within the gateway's call timeout"
    return f"the call was not delivered ({outcome.error_description or outcome.error_code})"


async def _hash_stored(
    stations: StationRegistry,
    station_id: str,
    password: str,
    old_hash: str | None,
    deadline: float,
) -> bool:
    """Poll the registry until its hash checks ``password``; False at ``deadline``."""
    loop = asyncio.get_running_loop()
    while True:
        record = await stations.get(station_id)
        current = record.password_hash if record is not None else None
        changed = current is not None and current != old_hash
        if changed and await asyncio.to_thread(verify_password, password, current or ""):
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.2)
