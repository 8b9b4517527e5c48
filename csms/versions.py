"""The OCPP versions this CSMS speaks: one enum, one table row per version.

Everything that differs between versions and is not a handler lives in the version's
:class:`VersionSpec`: the WebSocket subprotocol, where its JSON schemas are and how their files
are named, its CallError codes, the package holding its handlers, the shape of its messages
(1.6's or the 2.x family's) and how a station is given a new Basic auth password. Code asks
the table (``spec(version).generation == 1``) instead of comparing version strings.

Adding a version (OCPP 2.1, say) is one :class:`OcppVersion` member, one :data:`VERSIONS`
row (its schema folder ``ocpp_schemas/v21``, its error codes, ``handlers="manager.v21"``) and
the ``manager/v21`` package, which can reuse 2.0.1 handlers where the messages are the same.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from csms.errors import InvalidRequest
from csms.rpc import RpcError

__all__ = [
    "VERSIONS",
    "OcppVersion",
    "PasswordStyle",
    "UnsupportedVersion",
    "VersionSpec",
    "error_code",
    "spec",
    "supported",
]


class OcppVersion(enum.StrEnum):
    """An OCPP version, spelled as its WebSocket subprotocol."""

    OCPP16 = "ocpp1.6"
    OCPP201 = "ocpp2.0.1"


class PasswordStyle(enum.Enum):
    """How the CSMS gives a station a new HTTP Basic auth password."""

    AUTHORIZATION_KEY = "authorization-key"
    """OCPP 1.6 security whitepaper: ChangeConfiguration ``AuthorizationKey``, the password's
    octets hex-encoded (16-20 octets)."""
    BASIC_AUTH_PASSWORD = "basic-auth-password"
    """OCPP 2.x (A01): SetVariables ``SecurityCtrlr.BasicAuthPassword`` (16-40 characters)."""


class UnsupportedVersion(InvalidRequest):
    """A version string this CSMS does not speak."""


@dataclass(frozen=True, slots=True)
class VersionSpec:
    """What one OCPP version is, for every layer that has to know."""

    version: OcppVersion
    generation: int
    """1 for OCPP 1.6 message shapes (string meter values, idTag, connector ids), 2 for the
    2.x family (idToken objects, EVSEs, device model)."""
    schema_folder: str
    """Folder of its OCA JSON schemas inside ``ocpp_schemas``."""
    request_schema: str
    """File name pattern of a request schema (``{action}`` is replaced)."""
    response_schema: str
    error_codes: Mapping[RpcError, str]
    """Wire code of each RPC fault."""
    handlers: str
    """Module whose ``HANDLERS`` / ``RESULT_HANDLERS`` the manager routes to."""
    password: PasswordStyle

    @property
    def subprotocol(self) -> str:
        return self.version.value

    def code(self, error: RpcError) -> str:
        """Wire code of ``error`` in this version."""
        return self.error_codes[error]


_V16_CODES = MappingProxyType(
    {
        RpcError.FORMAT_VIOLATION: "FormationViolation",
        RpcError.PROTOCOL_ERROR: "ProtocolError",
        # 1.6 has no MessageTypeNotSupported nor RpcFrameworkError: a frame that does not
        # have the RPC structure "does not conform to the PDU structure".
        RpcError.MESSAGE_TYPE_NOT_SUPPORTED: "FormationViolation",
        RpcError.NOT_IMPLEMENTED: "NotImplemented",
        RpcError.NOT_SUPPORTED: "NotSupported",
        RpcError.INTERNAL_ERROR: "InternalError",
        RpcError.SECURITY_ERROR: "SecurityError",
        RpcError.PROPERTY_CONSTRAINT: "PropertyConstraintViolation",
        # Spelled this way in the OCPP 1.6 JSON specification.
        RpcError.OCCURRENCE_CONSTRAINT: "OccurenceConstraintViolation",
        RpcError.TYPE_CONSTRAINT: "TypeConstraintViolation",
        RpcError.GENERIC: "GenericError",
        RpcError.RPC_FRAMEWORK: "FormationViolation",
    }
)

_V2_CODES = MappingProxyType(
    {
        RpcError.FORMAT_VIOLATION: "FormatViolation",
        RpcError.PROTOCOL_ERROR: "ProtocolError",
        RpcError.MESSAGE_TYPE_NOT_SUPPORTED: "MessageTypeNotSupported",
        RpcError.NOT_IMPLEMENTED: "NotImplemented",
        RpcError.NOT_SUPPORTED: "NotSupported",
        RpcError.INTERNAL_ERROR: "InternalError",
        RpcError.SECURITY_ERROR: "SecurityError",
        RpcError.PROPERTY_CONSTRAINT: "PropertyConstraintViolation",
        RpcError.OCCURRENCE_CONSTRAINT: "OccurrenceConstraintViolation",
        RpcError.TYPE_CONSTRAINT: "TypeConstraintViolation",
        RpcError.GENERIC: "GenericError",
        RpcError.RPC_FRAMEWORK: "RpcFrameworkError",
    }
)

VERSIONS: Mapping[OcppVersion, VersionSpec] = MappingProxyType(
    {
        # In server preference order: the newest version a station offers is chosen.
        OcppVersion.OCPP201: VersionSpec(
            version=OcppVersion.OCPP201,
            generation=2,
            schema_folder="v201",
            request_schema="{action}Request.json",
            response_schema="{action}Response.json",
            error_codes=_V2_CODES,
            handlers="manager.v201",
            password=PasswordStyle.BASIC_AUTH_PASSWORD,
        ),
        OcppVersion.OCPP16: VersionSpec(
            version=OcppVersion.OCPP16,
            generation=1,
            schema_folder="v16",
            request_schema="{action}.json",
            response_schema="{action}Response.json",
            error_codes=_V16_CODES,
            handlers="manager.v16",
            password=PasswordStyle.AUTHORIZATION_KEY,
        ),
    }
)


def supported() -> tuple[OcppVersion, ...]:
    """Every version, in server preference order."""
    return tuple(VERSIONS)


def spec(version: str) -> VersionSpec:
    """The table row of ``version`` (an :class:`OcppVersion` or its subprotocol string).

    Raises :class:`UnsupportedVersion` for anything else.
    """
    try:
        return VERSIONS[OcppVersion(version)]
    except (ValueError, KeyError):
        raise UnsupportedVersion(f"unsupported OCPP version {version!r}") from None


def error_code(version: str, error: RpcError) -> str:
    """Wire error code of ``error`` in OCPP ``version``."""
    return spec(version).code(error)
