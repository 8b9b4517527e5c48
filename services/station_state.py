"""What stations told the CSMS about themselves: the 2.0.1 device model, the 1.6 configuration,
the local authorization list version and the installed certificates, per station.

The managers write it from stations' answers to CSMS calls (GetVariables, SetVariables,
GetConfiguration, ChangeConfiguration, GetLocalListVersion, SendLocalList,
GetInstalledCertificateIds, DeleteCertificate, InstallCertificate) and from NotifyReport; the
operator API reads it. Every fact is the latest one learned and says when the CSMS learned
it (``updated_at``) and from which message (``source``).

Storage, the same shape in both implementations: one hash per station and kind
(:class:`StateKind`) whose fields are small msgspec JSON values, so a change writes only the
fields it changes and never rewrites a whole record. Every change is one atomic
:class:`HashChange` (in Redis, one script call: one round trip). Each kind is bounded per
station (:data:`CAPS`): entries a change would add beyond the bound are left out and counted
(``dropped``, which the handlers log); stored entries are still updated.

The device model keeps one field per part of a variable: the value of each attribute type,
the traits of each (mutability, persistent, constant, known from reports only) and the
variable's characteristics. So a GetVariables answer that brings an Actual value keeps the
mutability a report stated. An index of the variables' keys (:attr:`VariableRef.key`, which
starts with the component) orders them for paged listings and component filters.

Report parts (NotifyReport) are assembled per ``requestId``: each part is applied as it
arrives, in whatever order (parts describe different variables, so order cannot matter),
and a repeated part (the same ``seqNo`` and ``generatedAt`` again) is not applied a second
time, so it cannot undo what was learned since. A report is complete once every ``seqNo``
from 0 to that of its part with ``tbc`` false has arrived; a new part for a complete report
starts a new report under that ``requestId`` (callers reuse ids). What a report's parts were
is kept for :data:`REPORT_TRACKING_SECONDS` after its last part (the in-memory store keeps
the last :data:`MAX_TRACKED_REPORTS` reports of each station).

Secrets are never stored: the handlers leave out the values of ``BasicAuthPassword`` and
``AuthorizationKey``.

:class:`MemoryStationStateStore` is the embedded default; :mod:`services.redis_station_state`
holds the Redis one. Both are a :class:`HashStationState`: the domain methods are written
once, on top of four storage primitives.
"""

from __future__ import annotations

import abc
import bisect
import enum
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import quote, unquote

import msgspec

from services import rules
from services.models import Page

__all__ = [
    "ATTRIBUTE_TYPES",
    "CAPS",
    "MAX_CERTIFICATES",
    "MAX_CONFIGURATION_KEYS",
    "MAX_TRACKED_REPORTS",
    "MAX_VARIABLES",
    "REPORT_TRACKING_SECONDS",
    "Applied",
    "AttributeTraits",
    "AttributeValue",
    "CertificateHash",
    "CertificateInstall",
    "CertificateState",
    "ConfigurationEntry",
    "DeviceVariable",
    "Entry",
    "HashChange",
    "HashStationState",
    "InstalledCertificate",
    "IssuedCertificate",
    "LocalListState",
    "MemoryStationStateStore",
    "ReportClaim",
    "ReportPart",
    "ReportProgress",
    "StateKind",
    "StationStateStore",
    "VariableAttribute",
    "VariableCharacteristics",
    "VariableRef",
    "VariableUpdate",
    "claim_part",
    "report_progress",
]


class StateKind(enum.StrEnum):
    """One hash per station and kind."""

    VARIABLES = "variables"
    CONFIGURATION = "configuration"
    LOCAL_LIST = "local-list"
    CERTIFICATES = "certificates"
    CERTIFICATE_INSTALLS = "certificate-installs"
    ISSUED_CERTIFICATES = "issued-certificates"


MAX_VARIABLES = 5000
"""Device-model variables kept per station (a full inventory is typically a few hundred)."""
MAX_CONFIGURATION_KEYS = 1000
"""1.6 configuration keys kept per station."""
MAX_CERTIFICATES = 100
"""Installed certificates kept per station."""
CAPS: Mapping[StateKind, int] = {
    StateKind.VARIABLES: MAX_VARIABLES,
    StateKind.CONFIGURATION: MAX_CONFIGURATION_KEYS,
    StateKind.LOCAL_LIST: 1,
    StateKind.CERTIFICATES: MAX_CERTIFICATES,
    StateKind.CERTIFICATE_INSTALLS: 16,
    StateKind.ISSUED_CERTIFICATES: 16,
}
REPORT_TRACKING_SECONDS = 3600
"""How long the parts of a report are remembered after its last part (Redis)."""
MAX_TRACKED_REPORTS = 16
"""Reports whose parts the in-memory store remembers per station."""
ATTRIBUTE_TYPES = ("Actual", "Target", "MinSet", "MaxSet")
"""OCPP 2.x AttributeEnumType, in the order a variable lists its attributes."""

VARIABLE_CURSOR = "variables"
COMPLETE = "complete"
"""Field of a report's tracking that marks it complete (parts are decimal seqNos)."""
LOCAL_LIST_FIELD = "version"
_TRAITS = "traits"
_CHARACTERISTICS = "characteristics"


def _enc(value: str | None) -> str:
    return "" if value is None else quote(value, safe="")


def _dec(text: str) -> str | None:
    return unquote(text) if text else None


def _num(value: int | None) -> str:
    return "" if value is None else str(value)


# --- the device model ----------------------------------------------------------------------


class VariableRef(msgspec.Struct, frozen=True, kw_only=True):
    """Which variable: component (name, instance, EVSE, connector) and variable (name,
    instance). An empty instance is no instance."""

    component: str
    variable: str
    component_instance: str | None = None
    evse_id: int | None = None
    connector_id: int | None = None
    variable_instance: str | None = None

    @classmethod
    def from_ocpp(cls, component: Mapping[str, Any], variable: Mapping[str, Any]) -> VariableRef:
        """The ref of an OCPP 2.x ComponentType and VariableType."""
        evse = component.get("evse") or {}
        return cls(
            component=component["name"],
            component_instance=component.get("instance") or None,
            evse_id=evse.get("id"),
            connector_id=evse.get("connectorId"),
            variable=variable["name"],
            variable_instance=variable.get("instance") or None,
        )

    @property
    def key(self) -> str:
        """Reversible text key, component first (so a component's variables are one key
        range); percent-encoded parts joined by ``:``, ASCII, so text order is byte order."""
        return ":".join(
            (
                _enc(self.component),
                _enc(self.component_instance),
                _num(self.evse_id),
                _num(self.connector_id),
                _enc(self.variable),
                _enc(self.variable_instance),
            )
        )

    @classmethod
    def from_key(cls, key: str) -> VariableRef:
        component, component_instance, evse, connector, variable, variable_instance = key.split(":")
        return cls(
            component=unquote(component),
            component_instance=_dec(component_instance),
            evse_id=int(evse) if evse else None,
            connector_id=int(connector) if connector else None,
            variable=unquote(variable),
            variable_instance=_dec(variable_instance),
        )


def component_prefix(component: str) -> str:
    """The start of the keys of every variable of ``component`` (any instance or EVSE)."""
    return _enc(component) + ":"


class AttributeValue(msgspec.Struct, frozen=True, kw_only=True):
    """The value of one attribute of a variable, as last learned."""

    value: str | None = None
    """None when the station did not say (write-only variables, secrets)."""
    reboot_required: bool = False
    """Set by a SetVariables answered RebootRequired: the value applies after a reboot."""
    source: str
    """The message it came from: GetVariables, SetVariables or NotifyReport."""
    updated_at: str


class AttributeTraits(msgspec.Struct, frozen=True, kw_only=True):
    """How an attribute behaves, as a report stated it (the OCPP defaults when it did not)."""

    mutability: str = "ReadWrite"
    persistent: bool = False
    constant: bool = False
    updated_at: str


class VariableCharacteristics(msgspec.Struct, frozen=True, kw_only=True):
    """A variable's VariableCharacteristicsType, as a report stated it."""

    data_type: str
    supports_monitoring: bool
    unit: str | None = None
    min_limit: float | None = None
    max_limit: float | None = None
    values_list: str | None = None
    updated_at: str


class VariableAttribute(msgspec.Struct, frozen=True, kw_only=True):
    """One attribute type of a variable, as read: its value and traits, either may be
    unknown."""

    type: str
    value: AttributeValue | None = None
    traits: AttributeTraits | None = None


class DeviceVariable(msgspec.Struct, frozen=True, kw_only=True):
    """A variable of the device model with what is known of it."""

    ref: VariableRef
    attributes: list[VariableAttribute] = []
    characteristics: VariableCharacteristics | None = None


class VariableUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """What one message says about one variable; only the parts given are written.

    ``values`` and ``traits`` are keyed by attribute type (:data:`ATTRIBUTE_TYPES`).
    """

    ref: VariableRef
    values: dict[str, AttributeValue] = {}
    traits: dict[str, AttributeTraits] = {}
    characteristics: VariableCharacteristics | None = None


class ReportPart(msgspec.Struct, frozen=True, kw_only=True):
    """One NotifyReport message: its place in its report and its variables."""

    request_id: int
    seq_no: int
    tbc: bool
    generated_at: str
    variables: list[VariableUpdate] = []


class ReportProgress(msgspec.Struct, frozen=True, kw_only=True):
    """What applying a report part did."""

    applied: bool
    """False for a repeated part: nothing was written."""
    complete: bool
    """Every part from seqNo 0 to the last (``tbc`` false) has arrived."""
    parts: int
    """Parts of this report received so far."""
    dropped: int
    """Variables left out: the station's device model is full (:data:`MAX_VARIABLES`)."""


def _variable_field(key: str, attribute: str) -> str:
    return f"{key}|{attribute}"


def _traits_field(key: str, attribute: str) -> str:
    return f"{key}|{attribute}|{_TRAITS}"


def _characteristics_field(key: str) -> str:
    return f"{key}|{_CHARACTERISTICS}"


def variable_fields(key: str) -> list[str]:
    """Every field a variable may have, in the order :func:`variable_of` reads them."""
    return (
        [_variable_field(key, attribute) for attribute in ATTRIBUTE_TYPES]
        + [_traits_field(key, attribute) for attribute in ATTRIBUTE_TYPES]
        + [_characteristics_field(key)]
    )


_FIELDS_PER_VARIABLE = 2 * len(ATTRIBUTE_TYPES) + 1


# --- 1.6 configuration, local list, certificates -------------------------------------------


class ConfigurationEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One 1.6 configuration key."""

    key: str
    readonly: bool
    value: str | None = None
    reboot_required: bool = False
    """Set by a ChangeConfiguration answered RebootRequired."""
    source: str
    """GetConfiguration or ChangeConfiguration."""
    updated_at: str


class LocalListState(msgspec.Struct, frozen=True, kw_only=True):
    """The version of the station's local authorization list."""

    version: int
    """As the station reported it or as last sent and accepted (1.6: -1 means the station
    does not support a local list, 0 that it holds none)."""
    source: str
    """GetLocalListVersion or SendLocalList."""
    updated_at: str
    update_type: str | None = None
    """Full or Differential, for a SendLocalList."""


class CertificateHash(msgspec.Struct, frozen=True, kw_only=True):
    """OCPP's CertificateHashDataType (the same in 1.6's security extension and 2.0.1)."""

    hash_algorithm: str
    issuer_name_hash: str
    issuer_key_hash: str
    serial_number: str

    @classmethod
    def from_ocpp(cls, data: Mapping[str, Any]) -> CertificateHash:
        return cls(
            hash_algorithm=data["hashAlgorithm"],
            issuer_name_hash=data["issuerNameHash"],
            issuer_key_hash=data["issuerKeyHash"],
            serial_number=data["serialNumber"],
        )

    @property
    def key(self) -> str:
        """Names the certificate; hex digits compared without regard to case."""
        parts = (self.hash_algorithm, self.issuer_name_hash, self.issuer_key_hash)
        return ":".join(_enc(part.casefold()) for part in (*parts, self.serial_number))


class InstalledCertificate(msgspec.Struct, frozen=True, kw_only=True):
    """A certificate the station reported installed."""

    certificate_type: str
    hash: CertificateHash
    child_hashes: list[CertificateHash] = []
    """2.0.1: the hashes of the chain's sub-CA certificates."""
    source: str
    updated_at: str


class CertificateInstall(msgspec.Struct, frozen=True, kw_only=True):
    """A certificate of ``certificate_type`` the station accepted to install (InstallCertificate):
    which one shows in the next GetInstalledCertificateIds."""

    certificate_type: str
    installed_at: str


class IssuedCertificate(msgspec.Struct, frozen=True, kw_only=True):
    """A certificate the CSMS signed for the station and sent in CertificateSigned (the
    latest per type), with the station's answer; the renewal check reads ``not_after``."""

    certificate_type: str
    serial_number: str
    not_after: str
    fingerprint_sha256: str
    status: str
    """The station's CertificateSignedResponse status (Accepted, Rejected), or the outcome
    when it gave none (a CallError code, ``timeout``, ``undelivered``)."""
    issued_at: str
    renewal_requested_at: str | None = None
    """When the station was asked to renew it (TriggerMessage), so it is asked once."""


class CertificateState(msgspec.Struct, frozen=True, kw_only=True):
    """What is known of a station's certificates."""

    installed: list[InstalledCertificate] = []
    installs: list[CertificateInstall] = []
    """The latest accepted install of each type."""
    issued: list[IssuedCertificate] = []
    """Certificates the CSMS signed for the station, the latest per type."""


def _certificate_prefix(certificate_type: str) -> str:
    return _enc(certificate_type) + "|"


def _certificate_field(certificate: InstalledCertificate) -> str:
    return _certificate_prefix(certificate.certificate_type) + certificate.hash.key


# --- changes: what both implementations apply atomically -----------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """A member of a kind (a variable, a key, a certificate) and the fields to write for it.

    A member not yet stored counts against the kind's cap; for the variables the members are
    the index's, for the other kinds a member is its one field."""

    member: str
    fields: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class ReportClaim:
    """A report part to apply only if it was not applied before."""

    request_id: int
    seq_no: int
    stamp: str
    """``{0 or 1: tbc}|{generatedAt}``: the same again is a repeat."""


@dataclass(frozen=True, slots=True)
class HashChange:
    """One atomic change of one station's hash of ``kind``, applied in this order: the claim
    (nothing more happens for a repeated part), ``clear``, ``delete``, the fields matching
    ``drop_prefixes`` / ``drop_suffixes``, then ``entries`` up to the kind's cap."""

    kind: StateKind
    entries: tuple[Entry, ...] = ()
    clear: bool = False
    delete: tuple[str, ...] = ()
    drop_prefixes: tuple[str, ...] = ()
    drop_suffixes: tuple[str, ...] = ()
    claim: ReportClaim | None = None

    def __post_init__(self) -> None:
        if self.kind is StateKind.VARIABLES and (
            self.delete or self.drop_prefixes or self.drop_suffixes
        ):
            raise ValueError("variables are only added or cleared (their index would drift)")
        if self.claim is not None and self.kind is not StateKind.VARIABLES:
            raise ValueError("only report parts are claimed")


@dataclass(frozen=True, slots=True)
class Applied:
    """What a :class:`HashChange` did."""

    claimed: bool
    dropped: int
    parts: int = 0
    complete: bool = False


def claim_part(tracking: dict[str, str], claim: ReportClaim) -> bool:
    """Record a part in its report's tracking; False for a repeat. A part for a complete
    report that is not a repeat starts the tracking afresh."""
    seq = str(claim.seq_no)
    if tracking.get(seq) == claim.stamp:
        return False
    if COMPLETE in tracking:
        tracking.clear()
    tracking[seq] = claim.stamp
    return True


def report_progress(tracking: Mapping[str, str]) -> tuple[int, bool]:
    """(parts received, complete) of a report's tracking. The last part is the lowest seqNo
    with ``tbc`` false; complete when every seqNo from 0 to it is there."""
    seqs = [int(name) for name in tracking if name != COMPLETE]
    finals = [int(name) for name, stamp in tracking.items() if name != COMPLETE and stamp[0] == "0"]
    if not finals or min(finals) < 0:
        return len(seqs), False
    final = min(finals)
    return len(seqs), sum(1 for seq in seqs if 0 <= seq <= final) == final + 1


_encoder = msgspec.json.Encoder()
_S = TypeVar("_S")


def _decoder(kind: type[_S]) -> msgspec.json.Decoder[_S]:
    return msgspec.json.Decoder(kind)


_value_decoder = _decoder(AttributeValue)
_traits_decoder = _decoder(AttributeTraits)
_characteristics_decoder = _decoder(VariableCharacteristics)
_configuration_decoder = _decoder(ConfigurationEntry)
_local_list_decoder = _decoder(LocalListState)
_certificate_decoder = _decoder(InstalledCertificate)
_install_decoder = _decoder(CertificateInstall)
_issued_decoder = _decoder(IssuedCertificate)


def variable_entry(update: VariableUpdate) -> Entry:
    key = update.ref.key
    fields: list[tuple[str, bytes]] = [
        (_variable_field(key, attribute), _encoder.encode(value))
        for attribute, value in update.values.items()
    ]
    fields += [
        (_traits_field(key, attribute), _encoder.encode(traits))
        for attribute, traits in update.traits.items()
    ]
    if update.characteristics is not None:
        fields.append((_characteristics_field(key), _encoder.encode(update.characteristics)))
    return Entry(key, tuple(fields))


def _single(member: str, value: msgspec.Struct) -> Entry:
    return Entry(member, ((member, _encoder.encode(value)),))


def variable_of(key: str, raws: Sequence[bytes | None]) -> DeviceVariable:
    """The variable of ``key`` from its fields' values, read in :func:`variable_fields` order."""
    count = len(ATTRIBUTE_TYPES)
    attributes = []
    for i, attribute in enumerate(ATTRIBUTE_TYPES):
        value, traits = raws[i], raws[count + i]
        if value is None and traits is None:
            continue
        attributes.append(
            VariableAttribute(
                type=attribute,
                value=_value_decoder.decode(value) if value is not None else None,
                traits=_traits_decoder.decode(traits) if traits is not None else None,
            )
        )
    characteristics = raws[2 * count]
    return DeviceVariable(
        ref=VariableRef.from_key(key),
        attributes=attributes,
        characteristics=(
            _characteristics_decoder.decode(characteristics)
            if characteristics is not None
            else None
        ),
    )


def variable_query(component: str | None, cursor: str | None, limit: int) -> rules.IdQuery:
    """Validate the arguments of :meth:`StationStateStore.variables` (``ValueError``)."""
    return rules.IdQuery(
        limit=rules.check_limit(limit),
        after=rules.decode_cursor(VARIABLE_CURSOR, cursor) if cursor is not None else None,
        prefix=component_prefix(component) if component is not None else "",
    )


# --- the interface -------------------------------------------------------------------------


@runtime_checkable
class StationStateStore(Protocol):
    """Where what stations reported about themselves lives (shared by managers and API).

    Writers return how many new entries were left out because the station's kind is full
    (:data:`CAPS`). Failures raise :class:`~services.interfaces.StoreUnavailable`.
    """

    async def update_variables(self, station_id: str, updates: Sequence[VariableUpdate]) -> int:
        """Write the given parts of these variables (GetVariables, SetVariables)."""
        ...

    async def apply_report_part(self, station_id: str, part: ReportPart) -> ReportProgress:
        """Apply one NotifyReport part unless it is a repeat (see the module docstring)."""
        ...

    async def variables(
        self,
        station_id: str,
        *,
        component: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[DeviceVariable]:
        """The device model in key order (component name first), optionally of one
        component; ``ValueError`` for a bad cursor or limit."""
        ...

    async def replace_configuration(
        self, station_id: str, entries: Sequence[ConfigurationEntry]
    ) -> int:
        """The whole configuration is ``entries`` (GetConfiguration of every key)."""
        ...

    async def update_configuration(
        self,
        station_id: str,
        entries: Sequence[ConfigurationEntry],
        unknown_keys: Sequence[str] = (),
    ) -> int:
        """Write these keys and forget ``unknown_keys`` (the station has none such)."""
        ...

    async def configuration(self, station_id: str) -> list[ConfigurationEntry]:
        """Every stored key, in key order."""
        ...

    async def set_local_list(self, station_id: str, state: LocalListState) -> None: ...

    async def local_list(self, station_id: str) -> LocalListState | None: ...

    async def replace_certificates(
        self,
        station_id: str,
        certificates: Sequence[InstalledCertificate],
        *,
        types: Sequence[str] | None = None,
    ) -> int:
        """The station's certificates of ``types`` (None: of every type) are
        ``certificates``."""
        ...

    async def remove_certificate(self, station_id: str, certificate: CertificateHash) -> None:
        """Forget the certificate with this hash, whatever its type."""
        ...

    async def note_install(self, station_id: str, install: CertificateInstall) -> None:
        """Remember an accepted InstallCertificate (the latest per type)."""
        ...

    async def certificates(self, station_id: str) -> CertificateState: ...

    async def note_issued(self, station_id: str, issued: IssuedCertificate) -> None:
        """Remember the certificate of ``issued.certificate_type`` the CSMS sent (replacing
        the previous one of that type)."""
        ...

    async def issued_certificates(self, station_id: str) -> list[IssuedCertificate]:
        """The certificates the CSMS sent the station, the latest per type."""
        ...

    async def forget(self, station_id: str) -> None:
        """Remove everything stored about the station (it was deleted)."""
        ...


class HashStationState(abc.ABC):
    """:class:`StationStateStore` written once on four storage primitives: apply a
    :class:`HashChange`, read a whole hash, read fields, read the variable index."""

    @abc.abstractmethod
    async def _apply(self, station_id: str, change: HashChange) -> Applied:
        """Apply ``change`` atomically."""

    @abc.abstractmethod
    async def _hash(self, station_id: str, kind: StateKind) -> dict[str, bytes]:
        """Every field of the station's hash of ``kind``."""

    @abc.abstractmethod
    async def _fields(
        self, station_id: str, kind: StateKind, names: Sequence[str]
    ) -> list[bytes | None]:
        """These fields of the station's hash of ``kind`` (None where absent)."""

    @abc.abstractmethod
    async def _variable_keys(self, station_id: str, query: rules.IdQuery) -> list[str]:
        """Up to ``query.limit + 1`` variable keys after ``query.after`` starting with
        ``query.prefix``, in order."""

    @abc.abstractmethod
    async def forget(self, station_id: str) -> None: ...

    async def update_variables(self, station_id: str, updates: Sequence[VariableUpdate]) -> int:
        if not updates:
            return 0
        entries = tuple(variable_entry(update) for update in updates)
        return (await self._apply(station_id, HashChange(StateKind.VARIABLES, entries))).dropped

    async def apply_report_part(self, station_id: str, part: ReportPart) -> ReportProgress:
        claim = ReportClaim(
            part.request_id, part.seq_no, ("1|" if part.tbc else "0|") + part.generated_at
        )
        change = HashChange(
            StateKind.VARIABLES,
            tuple(variable_entry(update) for update in part.variables),
            claim=claim,
        )
        applied = await self._apply(station_id, change)
        return ReportProgress(
            applied=applied.claimed,
            complete=applied.complete,
            parts=applied.parts,
            dropped=applied.dropped,
        )

    async def variables(
        self,
        station_id: str,
        *,
        component: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[DeviceVariable]:
        query = variable_query(component, cursor, limit)
        keys = await self._variable_keys(station_id, query)
        if not keys:
            return Page(items=[])
        names = [name for key in keys for name in variable_fields(key)]
        raws = await self._fields(station_id, StateKind.VARIABLES, names)
        size = _FIELDS_PER_VARIABLE
        items = [variable_of(key, raws[i * size : (i + 1) * size]) for i, key in enumerate(keys)]
        return rules.page_of(items, query.limit, lambda item: item.ref.key, VARIABLE_CURSOR)

    async def replace_configuration(
        self, station_id: str, entries: Sequence[ConfigurationEntry]
    ) -> int:
        change = HashChange(
            StateKind.CONFIGURATION, tuple(_single(e.key, e) for e in entries), clear=True
        )
        return (await self._apply(station_id, change)).dropped

    async def update_configuration(
        self,
        station_id: str,
        entries: Sequence[ConfigurationEntry],
        unknown_keys: Sequence[str] = (),
    ) -> int:
        if not entries and not unknown_keys:
            return 0
        change = HashChange(
            StateKind.CONFIGURATION,
            tuple(_single(e.key, e) for e in entries),
            delete=tuple(unknown_keys),
        )
        return (await self._apply(station_id, change)).dropped

    async def configuration(self, station_id: str) -> list[ConfigurationEntry]:
        fields = await self._hash(station_id, StateKind.CONFIGURATION)
        return [_configuration_decoder.decode(fields[name]) for name in sorted(fields)]

    async def set_local_list(self, station_id: str, state: LocalListState) -> None:
        entry = _single(LOCAL_LIST_FIELD, state)
        await self._apply(station_id, HashChange(StateKind.LOCAL_LIST, (entry,)))

    async def local_list(self, station_id: str) -> LocalListState | None:
        raws = await self._fields(station_id, StateKind.LOCAL_LIST, [LOCAL_LIST_FIELD])
        return _local_list_decoder.decode(raws[0]) if raws[0] is not None else None

    async def replace_certificates(
        self,
        station_id: str,
        certificates: Sequence[InstalledCertificate],
        *,
        types: Sequence[str] | None = None,
    ) -> int:
        change = HashChange(
            StateKind.CERTIFICATES,
            tuple(_single(_certificate_field(c), c) for c in certificates),
            clear=types is None,
            drop_prefixes=tuple(_certificate_prefix(t) for t in types or ()),
        )
        return (await self._apply(station_id, change)).dropped

    async def remove_certificate(self, station_id: str, certificate: CertificateHash) -> None:
        change = HashChange(StateKind.CERTIFICATES, drop_suffixes=("|" + certificate.key,))
        await self._apply(station_id, change)

    async def note_install(self, station_id: str, install: CertificateInstall) -> None:
        entry = _single(_enc(install.certificate_type), install)
        await self._apply(station_id, HashChange(StateKind.CERTIFICATE_INSTALLS, (entry,)))

    async def certificates(self, station_id: str) -> CertificateState:
        installed = await self._hash(station_id, StateKind.CERTIFICATES)
        installs = await self._hash(station_id, StateKind.CERTIFICATE_INSTALLS)
        return CertificateState(
            installed=[_certificate_decoder.decode(installed[name]) for name in sorted(installed)],
            installs=[_install_decoder.decode(installs[name]) for name in sorted(installs)],
            issued=await self.issued_certificates(station_id),
        )

    async def note_issued(self, station_id: str, issued: IssuedCertificate) -> None:
        entry = _single(_enc(issued.certificate_type), issued)
        await self._apply(station_id, HashChange(StateKind.ISSUED_CERTIFICATES, (entry,)))

    async def issued_certificates(self, station_id: str) -> list[IssuedCertificate]:
        issued = await self._hash(station_id, StateKind.ISSUED_CERTIFICATES)
        return [_issued_decoder.decode(issued[name]) for name in sorted(issued)]


# --- in memory -----------------------------------------------------------------------------


def _matches(name: str, prefixes: Iterable[str], suffixes: Iterable[str]) -> bool:
    return any(name.startswith(p) for p in prefixes) or any(name.endswith(s) for s in suffixes)


class MemoryStationStateStore(HashStationState):
    """:class:`StationStateStore` in dicts (embedded default, tests). Values are stored
    encoded, as a real store would hold them."""

    def __init__(self) -> None:
        self._hashes: dict[tuple[str, StateKind], dict[str, bytes]] = {}
        self._indexes: dict[str, list[str]] = {}
        self._reports: dict[str, OrderedDict[int, dict[str, str]]] = {}

    def _tracking(self, station_id: str, request_id: int) -> dict[str, str]:
        reports = self._reports.setdefault(station_id, OrderedDict())
        tracking = reports.pop(request_id, {})
        reports[request_id] = tracking  # the most recent last
        while len(reports) > MAX_TRACKED_REPORTS:
            reports.popitem(last=False)
        return tracking

    async def _apply(self, station_id: str, change: HashChange) -> Applied:
        tracking = None
        if change.claim is not None:
            tracking = self._tracking(station_id, change.claim.request_id)
            if not claim_part(tracking, change.claim):
                parts, complete = report_progress(tracking)
                return Applied(claimed=False, dropped=0, parts=parts, complete=complete)
        fields = self._hashes.setdefault((station_id, change.kind), {})
        index = (
            self._indexes.setdefault(station_id, []) if change.kind is StateKind.VARIABLES else None
        )
        if change.clear:
            fields.clear()
            if index is not None:
                index.clear()
        for name in change.delete:
            fields.pop(name, None)
        if change.drop_prefixes or change.drop_suffixes:
            for name in [
                n for n in fields if _matches(n, change.drop_prefixes, change.drop_suffixes)
            ]:
                del fields[name]
        cap = CAPS[change.kind]
        count = len(index) if index is not None else len(fields)
        dropped = 0
        for entry in change.entries:
            if index is not None:
                at = bisect.bisect_left(index, entry.member)
                known = at < len(index) and index[at] == entry.member
            else:
                known = entry.member in fields
            if not known:
                if count >= cap:
                    dropped += 1
                    continue
                count += 1
                if index is not None:
                    index.insert(at, entry.member)
            fields.update(entry.fields)
        if tracking is None:
            return Applied(claimed=True, dropped=dropped)
        parts, complete = report_progress(tracking)
        if complete:
            tracking[COMPLETE] = "1"
        return Applied(claimed=True, dropped=dropped, parts=parts, complete=complete)

    async def _hash(self, station_id: str, kind: StateKind) -> dict[str, bytes]:
        return dict(self._hashes.get((station_id, kind), {}))

    async def _fields(
        self, station_id: str, kind: StateKind, names: Sequence[str]
    ) -> list[bytes | None]:
        fields = self._hashes.get((station_id, kind), {})
        return [fields.get(name) for name in names]

    async def _variable_keys(self, station_id: str, query: rules.IdQuery) -> list[str]:
        index = self._indexes.get(station_id, [])
        if query.after is not None and query.after >= query.prefix:
            start = bisect.bisect_right(index, query.after)
        else:
            start = bisect.bisect_left(index, query.prefix)
        keys: list[str] = []
        for key in index[start:]:
            if not key.startswith(query.prefix) or len(keys) > query.limit:
                break
            keys.append(key)
        return keys

    async def forget(self, station_id: str) -> None:
        for kind in StateKind:
            self._hashes.pop((station_id, kind), None)
        self._indexes.pop(station_id, None)
        self._reports.pop(station_id, None)
