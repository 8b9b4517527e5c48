"""What stations reported about themselves: the 2.0.1 device model, the 1.6 configuration, the
local authorization list version and the installed certificates (read scope).

The managers store it from the stations' answers to CSMS calls (GetVariables, SetVariables,
NotifyReport, GetConfiguration, ChangeConfiguration, GetLocalListVersion, SendLocalList,
GetInstalledCertificateIds, DeleteCertificate, InstallCertificate), so these routes show
what the last such answers said; send the call (``POST .../calls/{Action}``) to refresh it.

The routes end in a fixed segment after the station id, which may contain ``/`` (``%2F``):
the app registers this router before the stations router, whose detail route takes any
rest of the path as the id.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.auth import Reader
from api.context import API_PREFIX, ApiContext, Context
from api.errors import ErrorBody
from api.paging import Cursor, Limit, listing
from api.stations import station_not_found
from services.station_state import (
    CertificateHash,
    CertificateInstall,
    ConfigurationEntry,
    DeviceVariable,
    InstalledCertificate,
    IssuedCertificate,
    LocalListState,
    VariableAttribute,
    VariableCharacteristics,
)

__all__ = [
    "CertificateHashOut",
    "CertificatesOut",
    "ConfigurationKeyOut",
    "ConfigurationOut",
    "LocalListOut",
    "VariableOut",
    "VariablePage",
    "router",
]

router = APIRouter(prefix=API_PREFIX, tags=["station state"])

_UNKNOWN_STATION: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "unknown station"}
}


# --- models --------------------------------------------------------------------------------


class VariableAttributeOut(BaseModel):
    """One attribute of a variable: its last known value and, from reports, its traits."""

    type: str = Field(description="Actual, Target, MinSet or MaxSet")
    value: str | None = Field(default=None, description="null when unknown, write-only or a secret")
    reboot_required: bool = Field(
        default=False, description="set with SetVariables, answered RebootRequired"
    )
    source: str | None = Field(
        default=None,
        description="where the value came from: GetVariables, SetVariables, NotifyReport",
    )
    updated_at: str | None = Field(default=None, description="when the CSMS learned the value")
    mutability: str | None = Field(default=None, description="ReadOnly, WriteOnly, ReadWrite")
    persistent: bool | None = None
    constant: bool | None = None

    @classmethod
    def of(cls, attribute: VariableAttribute) -> VariableAttributeOut:
        value, traits = attribute.value, attribute.traits
        return cls(
            type=attribute.type,
            value=value.value if value is not None else None,
            reboot_required=value.reboot_required if value is not None else False,
            source=value.source if value is not None else None,
            updated_at=value.updated_at if value is not None else None,
            mutability=traits.mutability if traits is not None else None,
            persistent=traits.persistent if traits is not None else None,
            constant=traits.constant if traits is not None else None,
        )


class VariableCharacteristicsOut(BaseModel):
    """A variable's characteristics, as a report stated them."""

    data_type: str
    supports_monitoring: bool
    unit: str | None = None
    min_limit: float | None = None
    max_limit: float | None = None
    values_list: str | None = None
    updated_at: str

    @classmethod
    def of(cls, found: VariableCharacteristics) -> VariableCharacteristicsOut:
        return cls(
            data_type=found.data_type,
            supports_monitoring=found.supports_monitoring,
            unit=found.unit,
            min_limit=found.min_limit,
            max_limit=found.max_limit,
            values_list=found.values_list,
            updated_at=found.updated_at,
        )


class VariableOut(BaseModel):
    """One variable of a 2.0.1 station's device model."""

    component: str
    component_instance: str | None = None
    evse_id: int | None = None
    connector_id: int | None = None
    variable: str
    variable_instance: str | None = None
    attributes: list[VariableAttributeOut]
    characteristics: VariableCharacteristicsOut | None = None

    @classmethod
    def of(cls, found: DeviceVariable) -> VariableOut:
        ref = found.ref
        return cls(
            component=ref.component,
            component_instance=ref.component_instance,
            evse_id=ref.evse_id,
            connector_id=ref.connector_id,
            variable=ref.variable,
            variable_instance=ref.variable_instance,
            attributes=[VariableAttributeOut.of(a) for a in found.attributes],
            characteristics=(
                VariableCharacteristicsOut.of(found.characteristics)
                if found.characteristics is not None
                else None
            ),
        )


class VariablePage(BaseModel):
    items: list[VariableOut]
    next_cursor: str | None = None


class ConfigurationKeyOut(BaseModel):
    """One 1.6 configuration key."""

    key: str
    value: str | None = Field(default=None, description="null when unset or a secret")
    readonly: bool
    reboot_required: bool = Field(
        default=False, description="changed with ChangeConfiguration, answered RebootRequired"
    )
    source: str = Field(description="GetConfiguration or ChangeConfiguration")
    updated_at: str

    @classmethod
    def of(cls, entry: ConfigurationEntry) -> ConfigurationKeyOut:
        return cls(
            key=entry.key,
            value=entry.value,
            readonly=entry.readonly,
            reboot_required=entry.reboot_required,
            source=entry.source,
            updated_at=entry.updated_at,
        )


class ConfigurationOut(BaseModel):
    station_id: str
    items: list[ConfigurationKeyOut] = Field(description="in key order")


class LocalListOut(BaseModel):
    """The version of the station's local authorization list, null until one was learned."""

    station_id: str
    version: int | None = Field(
        default=None, description="0: no list; 1.6 -1: the station has no local list support"
    )
    update_type: str | None = Field(default=None, description="Full or Differential")
    source: str | None = Field(default=None, description="GetLocalListVersion or SendLocalList")
    updated_at: str | None = None

    @classmethod
    def of(cls, station_id: str, state: LocalListState | None) -> LocalListOut:
        if state is None:
            return cls(station_id=station_id)
        return cls(
            station_id=station_id,
            version=state.version,
            update_type=state.update_type,
            source=state.source,
            updated_at=state.updated_at,
        )


class CertificateHashOut(BaseModel):
    hash_algorithm: str
    issuer_name_hash: str
    issuer_key_hash: str
    serial_number: str

    @classmethod
    def of(cls, found: CertificateHash) -> CertificateHashOut:
        return cls(
            hash_algorithm=found.hash_algorithm,
            issuer_name_hash=found.issuer_name_hash,
            issuer_key_hash=found.issuer_key_hash,
            serial_number=found.serial_number,
        )


class InstalledCertificateOut(BaseModel):
    """A certificate the station reported installed (GetInstalledCertificateIds)."""

    certificate_type: str
    certificate_hash_data: CertificateHashOut
    child_certificate_hash_data: list[CertificateHashOut] = []
    updated_at: str

    @classmethod
    def of(cls, found: InstalledCertificate) -> InstalledCertificateOut:
        return cls(
            certificate_type=found.certificate_type,
            certificate_hash_data=CertificateHashOut.of(found.hash),
            child_certificate_hash_data=[CertificateHashOut.of(c) for c in found.child_hashes],
            updated_at=found.updated_at,
        )


class CertificateInstallOut(BaseModel):
    """The latest InstallCertificate of this type the station accepted."""

    certificate_type: str
    installed_at: str

    @classmethod
    def of(cls, found: CertificateInstall) -> CertificateInstallOut:
        return cls(certificate_type=found.certificate_type, installed_at=found.installed_at)


class IssuedCertificateOut(BaseModel):
    """A certificate the CSMS signed for the station (SignCertificate) and sent in
    CertificateSigned: the latest of each type, with the station's answer."""

    certificate_type: str
    serial_number: str = Field(description="hex, lower case")
    not_after: str
    fingerprint_sha256: str = Field(description="hex SHA-256 of the DER certificate")
    status: str = Field(description="the station's answer (Accepted, Rejected) or outcome")
    issued_at: str
    renewal_requested_at: str | None = Field(
        default=None, description="when the station was asked to renew it (TriggerMessage)"
    )

    @classmethod
    def of(cls, found: IssuedCertificate) -> IssuedCertificateOut:
        return cls(
            certificate_type=found.certificate_type,
            serial_number=found.serial_number,
            not_after=found.not_after,
            fingerprint_sha256=found.fingerprint_sha256,
            status=found.status,
            issued_at=found.issued_at,
            renewal_requested_at=found.renewal_requested_at,
        )


class CertificatesOut(BaseModel):
    station_id: str
    items: list[InstalledCertificateOut] = Field(
        description="as last reported, updated by accepted DeleteCertificate calls"
    )
    installs: list[CertificateInstallOut] = Field(
        description="accepted installs, which the next GetInstalledCertificateIds lists"
    )
    issued: list[IssuedCertificateOut] = Field(
        default=[], description="certificates the CSMS signed for the station, latest per type"
    )


# --- routes --------------------------------------------------------------------------------


async def _known(ctx: ApiContext, station_id: str) -> None:
    if await ctx.services.stations.get(station_id) is None:
        raise station_not_found(station_id)


@router.get(
    "/stations/{station_id:path}/variables",
    response_model=VariablePage,
    summary="A 2.0.1 station's device model (GetVariables, SetVariables, NotifyReport)",
    responses=_UNKNOWN_STATION,
)
async def list_variables(
    ctx: Context,
    _: Reader,
    station_id: str,
    cursor: Cursor = None,
    limit: Limit = 100,
    component: Annotated[
        str | None, Query(max_length=50, description="only this component's variables")
    ] = None,
) -> VariablePage:
    await _known(ctx, station_id)
    page = await listing(
        ctx.services.station_state.variables(
            station_id, component=component, cursor=cursor, limit=limit
        )
    )
    return VariablePage(
        items=[VariableOut.of(item) for item in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/stations/{station_id:path}/configuration",
    response_model=ConfigurationOut,
    summary="A 1.6 station's configuration keys (GetConfiguration, ChangeConfiguration)",
    responses=_UNKNOWN_STATION,
)
async def get_configuration(ctx: Context, _: Reader, station_id: str) -> ConfigurationOut:
    await _known(ctx, station_id)
    entries = await ctx.services.station_state.configuration(station_id)
    return ConfigurationOut(
        station_id=station_id, items=[ConfigurationKeyOut.of(entry) for entry in entries]
    )


@router.get(
    "/stations/{station_id:path}/local-list",
    response_model=LocalListOut,
    summary="The version of a station's local authorization list",
    responses=_UNKNOWN_STATION,
)
async def get_local_list(ctx: Context, _: Reader, station_id: str) -> LocalListOut:
    await _known(ctx, station_id)
    state = await ctx.services.station_state.local_list(station_id)
    return LocalListOut.of(station_id, state)


@router.get(
    "/stations/{station_id:path}/certificates",
    response_model=CertificatesOut,
    summary="The certificates a station reported installed",
    responses=_UNKNOWN_STATION,
)
async def get_certificates(ctx: Context, _: Reader, station_id: str) -> CertificatesOut:
    await _known(ctx, station_id)
    state = await ctx.services.station_state.certificates(station_id)
    return CertificatesOut(
        station_id=station_id,
        items=[InstalledCertificateOut.of(c) for c in state.installed],
        installs=[CertificateInstallOut.of(i) for i in state.installs],
        issued=[IssuedCertificateOut.of(i) for i in state.issued],
    )
