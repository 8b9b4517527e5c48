"""Registering, changing and deleting stations: the rules ``csms station add`` and the
operator API's ``/v1/stations`` routes share.

- :func:`register` provisions a station (``exist_ok``: or changes a registered one, as
  ``csms station add`` does); :func:`update` changes a registered one; :func:`delete` forgets
  one. Only the fields a :class:`StationChange` sets change; connection and boot facts stay.
- Credentials are written before the registration, so a station is never Accepted without
  the credentials asked for.
- A password must suit every OCPP version the station may use (its allowed versions, else
  the version it speaks, else all): 1.6 AuthorizationKeys are 16-20 octets, 2.0.1
  BasicAuthPasswords 16-40 characters of a small alphabet. A generated one suits them all.
  Passwords belong to security profiles 1 and 2 (HTTP Basic auth), which need one.
- Only the password's hash is stored; a generated password is handed back once
  (:attr:`StationSaved.generated_password`) and never logged.
- Deleting forgets the registry's record: credentials, connector statuses, index entries.
  The station's transactions stay (billing history). An online station is deleted only when
  forced; its socket stays open until it ends (no control message closes a station's socket
  on request: the ``ctl`` topic carries gateways' takeover notices only), and its next
  connection is refused unless ``unknown_stations`` or first-try mode admit unknown stations.

Refusals are exceptions with what the caller needs to word them itself
(:class:`StationRefused` carries a :class:`Refusal` and the failing field): the CLI names its
flags, the API its JSON fields.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections.abc import Sequence
from typing import TypeVar

import msgspec

from csms.credentials import check_password, generate_password, hash_password
from csms.errors import InvalidRequest
from services.interfaces import StationRegistry
from services.models import (
    OCPP_VERSIONS,
    RegistrationStatus,
    StationCredentials,
    StationRecord,
)

__all__ = [
    "Refusal",
    "StationChange",
    "StationExists",
    "StationNotFound",
    "StationOnline",
    "StationRefused",
    "StationSaved",
    "delete",
    "register",
    "update",
]

_T = TypeVar("_T")
_V16 = "ocpp1.6"
_V201 = "ocpp2.0.1"


class StationExists(InvalidRequest):
    """:func:`register` without ``exist_ok``: the station is registered already."""

    def __init__(self, station_id: str) -> None:
        super().__init__(f"station {station_id!r} is registered already")
        self.station_id = station_id


class StationNotFound(InvalidRequest):
    """The registry has no record of the station."""

    def __init__(self, station_id: str) -> None:
        super().__init__(f"no station {station_id!r} in the registry")
        self.station_id = station_id


class StationOnline(InvalidRequest):
    """:func:`delete` without ``force`` of a station a gateway holds now."""

    def __init__(self, record: StationRecord) -> None:
        super().__init__(f"station {record.station_id!r} is online")
        self.record = record


class Refusal(enum.StrEnum):
    """Which credential rule a change breaks (stable: the API answers it as its code)."""

    PASSWORD_UNUSABLE = "password_unusable"
    """The password does not suit one of the station's versions (:attr:`StationRefused.version`)."""
    PASSWORD_WITHOUT_BASIC_AUTH = "password_without_basic_auth"
    """A password for a profile-0 station: passwords are for profiles 1 and 2."""
    PASSWORD_WITH_CERTIFICATE = "password_with_certificate"
    """A password for a profile-3 station, which authenticates with a client certificate."""
    PASSWORD_REQUIRED = "password_required"
    """Profile 1 or 2 (HTTP Basic auth) and no password: none given, none stored, or removed."""
    TWO_PASSWORDS = "two_passwords"
    """A password and a generated one were both asked for."""


class StationRefused(InvalidRequest):
    """The change breaks a credential rule; nothing was written. ``field`` is the failing
    part of the change (``password``, ``security_profile``); the message never holds a
    password."""

    def __init__(
        self,
        refusal: Refusal,
        message: str,
        *,
        field: str,
        profile: int,
        version: str | None = None,
    ) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.field = field
        self.profile = profile
        """The security profile the station would have."""
        self.version = version
        """For :attr:`Refusal.PASSWORD_UNUSABLE`: the version the password does not suit."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StationChange:
    """What to set; what is left at its default is kept (a new station: Accepted, profile 0,
    no password, any version)."""

    registration: RegistrationStatus | None = None
    """None: a registered station keeps its registration; :func:`register` makes any other
    (new, or only seen at boot) Accepted."""
    security_profile: int | None = None
    password: str | msgspec.UnsetType | None = dataclasses.field(default=msgspec.UNSET, repr=False)
    """A new Basic auth password; None removes the stored one; UNSET keeps it."""
    generate_password: bool = False
    """Generate a new password suiting the station's versions (returned once)."""
    certificate_identity: str | msgspec.UnsetType | None = msgspec.UNSET
    """Profile 3: the name its client certificate must carry; None: the station id."""
    allowed_versions: Sequence[str] | None = None
    """OCPP versions it may connect with (empty: any); None keeps them."""


@dataclasses.dataclass(frozen=True, slots=True)
class StationSaved:
    """The station as stored after a :func:`register` or :func:`update`."""

    record: StationRecord
    registered: bool
    """The station was not registered before (new, or only seen at boot)."""
    password_changed: bool
    """A new password hash was stored (given or generated)."""
    password_versions: tuple[str, ...]
    """The versions a new password was checked against (a 1.6 station needs it as an
    AuthorizationKey too)."""
    generated_password: str | None = dataclasses.field(default=None, repr=False)
    """The generated password, for the caller to hand over once; only its hash is stored."""


async def register(
    stations: StationRegistry,
    station_id: str,
    change: StationChange,
    *,
    exist_ok: bool = False,
) -> StationSaved:
    """Provision ``station_id``; :class:`StationExists` when it is registered already,
    unless ``exist_ok`` (then it is changed like :func:`update`, and a station only seen at
    boot is registered). Without a registration in ``change`` it becomes Accepted, unless
    it was registered before (it keeps its own)."""
    record = await stations.get(station_id)
    if record is not None and record.known and not exist_ok:
        raise StationExists(station_id)
    return await _save(stations, station_id, record, change, registering=True)


async def update(stations: StationRegistry, station_id: str, change: StationChange) -> StationSaved:
    """Change what ``change`` sets of a station the registry has a record of
    (:class:`StationNotFound` otherwise); its registration changes only when given."""
    record = await stations.get(station_id)
    if record is None:
        raise StationNotFound(station_id)
    return await _save(stations, station_id, record, change, registering=False)


async def delete(
    stations: StationRegistry, station_id: str, *, force: bool = False
) -> StationRecord:
    """Forget ``station_id`` (see the module docstring); returns its record as it was.

    :class:`StationNotFound` when there is none; :class:`StationOnline` when a gateway holds
    it, unless ``force``."""
    record = await stations.get(station_id)
    if record is None:
        raise StationNotFound(station_id)
    if record.online and not force:
        raise StationOnline(record)
    if not await stations.delete(station_id):
        raise StationNotFound(station_id)  # deleted meanwhile
    return record


def _or_unset(value: _T | None) -> _T | msgspec.UnsetType:
    return msgspec.UNSET if value is None else value


def _password_versions(record: StationRecord | None, change: StationChange) -> tuple[str, ...]:
    """The versions a password must suit: those allowed, else the one the station speaks,
    else every version."""
    if change.allowed_versions is not None:
        versions: Sequence[str] = change.allowed_versions
    elif record is not None:
        versions = record.allowed_versions or ([record.ocpp_version] if record.ocpp_version else [])
    else:
        versions = []
    return tuple(versions) or OCPP_VERSIONS


def _check_password(password: str, versions: Sequence[str], profile: int) -> None:
    for version in versions:
        try:
            check_password(password, version=version)
        except ValueError as exc:
            raise StationRefused(
                Refusal.PASSWORD_UNUSABLE,
                f"password not usable for {version}: {exc}",
                field="password",
                profile=profile,
                version=version,
            ) from None
    if profile == 0:
        raise StationRefused(
            Refusal.PASSWORD_WITHOUT_BASIC_AUTH,
            "a password is for security profile 1 or 2 (HTTP Basic auth), not 0",
            field="password",
            profile=profile,
        )
    if profile == 3:
        raise StationRefused(
            Refusal.PASSWORD_WITH_CERTIFICATE,
            "security profile 3 authenticates with a client certificate, not a password",
            field="password",
            profile=profile,
        )


async def _save(
    stations: StationRegistry,
    station_id: str,
    record: StationRecord | None,
    change: StationChange,
    *,
    registering: bool,
) -> StationSaved:
    profile = change.security_profile
    if profile is None:
        profile = record.security_profile if record is not None else 0
    versions = _password_versions(record, change)
    password = change.password
    generated: str | None = None
    if change.generate_password:
        if not isinstance(password, msgspec.UnsetType):
            raise StationRefused(
                Refusal.TWO_PASSWORDS,
                "give a password or have one generated, not both",
                field="password",
                profile=profile,
            )
        generated = password = generate_password(version=_V16 if _V16 in versions else _V201)
    if isinstance(password, str):
        _check_password(password, versions, profile)
    elif profile in (1, 2) and (password is None or record is None or record.password_hash is None):
        raise StationRefused(
            Refusal.PASSWORD_REQUIRED,
            f"security profile {profile} uses HTTP Basic auth: the station needs a password",
            field="password",
            profile=profile,
        )
    password_hash: str | msgspec.UnsetType | None = msgspec.UNSET
    if isinstance(password, str):
        password_hash = await asyncio.to_thread(hash_password, password)
    elif password is None:
        password_hash = None
    credentials = StationCredentials(
        security_profile=_or_unset(change.security_profile),
        password_hash=password_hash,
        certificate_identity=change.certificate_identity,
        allowed_versions=_or_unset(
            tuple(change.allowed_versions) if change.allowed_versions is not None else None
        ),
    )
    if credentials != StationCredentials():
        # Credentials first: the station is never Accepted without the ones asked for.
        await stations.set_credentials(station_id, credentials)
    newly_registered = record is None or not record.known
    if change.registration is not None:
        await stations.provision(station_id, change.registration)
    elif registering and newly_registered:
        await stations.provision(station_id, RegistrationStatus.ACCEPTED)
    stored = await stations.get(station_id)
    if stored is None:
        raise StationNotFound(station_id)  # deleted meanwhile
    return StationSaved(
        record=stored,
        registered=newly_registered and stored.known,
        password_changed=isinstance(password, str),
        password_versions=versions if isinstance(password, str) else (),
        generated_password=generated,
    )
