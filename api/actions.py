"""Which actions the CSMS may send, per OCPP version: the operator API's ``calls`` routes.

The OCA schemas name every action of a version but not who initiates it; this table does
(OCPP 1.6 with its security extension, OCPP 2.0.1 part 2). ``DataTransfer`` goes both ways.
A test checks that each name here has schemas, so a typo cannot hide a route.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from csms.versions import OcppVersion
from ocpp_schemas import actions

__all__ = ["CSMS_ACTIONS", "ActionKind", "classify"]

CSMS_ACTIONS: Mapping[OcppVersion, frozenset[str]] = MappingProxyType(
    {
        OcppVersion.OCPP16: frozenset(
            {
                "CancelReservation",
                "ChangeAvailability",
                "ChangeConfiguration",
                "ClearCache",
                "ClearChargingProfile",
                "DataTransfer",
                "GetCompositeSchedule",
                "GetConfiguration",
                "GetDiagnostics",
                "GetLocalListVersion",
                "RemoteStartTransaction",
                "RemoteStopTransaction",
                "ReserveNow",
                "Reset",
                "SendLocalList",
                "SetChargingProfile",
                "TriggerMessage",
                "UnlockConnector",
                "UpdateFirmware",
                # Security extension (1.6 edition 2 security whitepaper).
                "CertificateSigned",
                "DeleteCertificate",
                "ExtendedTriggerMessage",
                "GetInstalledCertificateIds",
                "GetLog",
                "InstallCertificate",
                "SignedUpdateFirmware",
            }
        ),
        OcppVersion.OCPP201: frozenset(
            {
                "CancelReservation",
                "CertificateSigned",
                "ChangeAvailability",
                "ClearCache",
                "ClearChargingProfile",
                "ClearDisplayMessage",
                "ClearVariableMonitoring",
                "CostUpdated",
                "CustomerInformation",
                "DataTransfer",
                "DeleteCertificate",
                "GetBaseReport",
                "GetChargingProfiles",
                "GetCompositeSchedule",
                "GetDisplayMessages",
                "GetInstalledCertificateIds",
                "GetLocalListVersion",
                "GetLog",
                "GetMonitoringReport",
                "GetReport",
                "GetTransactionStatus",
                "GetVariables",
                "InstallCertificate",
                "PublishFirmware",
                "RequestStartTransaction",
                "RequestStopTransaction",
                "ReserveNow",
                "Reset",
                "SendLocalList",
                "SetChargingProfile",
                "SetDisplayMessage",
                "SetMonitoringBase",
                "SetMonitoringLevel",
                "SetNetworkProfile",
                "SetVariableMonitoring",
                "SetVariables",
                "TriggerMessage",
                "UnlockConnector",
                "UnpublishFirmware",
                "UpdateFirmware",
            }
        ),
    }
)


class ActionKind(enum.StrEnum):
    """How :func:`classify` sees an action name."""

    CSMS = "csms"
    """The CSMS may send it."""
    STATION = "station"
    """Only the station sends it (BootNotification, ...)."""
    UNKNOWN = "unknown"
    """The version has no such action."""


def classify(version: OcppVersion, action: str) -> ActionKind:
    """What ``action`` is in ``version``."""
    if action in CSMS_ACTIONS[version]:
        return ActionKind.CSMS
    if action in actions(version):
        return ActionKind.STATION
    return ActionKind.UNKNOWN
