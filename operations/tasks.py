"""Everyday station tasks in one shape for both OCPP versions: reset, unlock, change
availability, trigger a message. Each task is translated to its version's call; the call's
outcome is returned as it is (see :mod:`operations.calls`).

=====================  ======================================  ==================================
task                   OCPP 1.6                                OCPP 2.0.1
=====================  ======================================  ==================================
reset                  Reset ``Hard`` (immediate) / ``Soft``   Reset ``Immediate`` / ``OnIdle``
unlock                 UnlockConnector ``connectorId``         UnlockConnector ``evseId`` +
                                                               ``connectorId``
availability           ChangeAvailability ``connectorId``      ChangeAvailability
                       (0 = station) + ``Operative`` /         ``operationalStatus`` (+ ``evse``)
                       ``Inoperative``
trigger                TriggerMessage ``requestedMessage``     TriggerMessage ``requestedMessage``
                       (+ ``connectorId``)                     (+ ``evse``)
=====================  ======================================  ==================================

1.6 has no EVSEs: its connector ids number the station's connectors, so where a task names
an EVSE for a 1.6 station the EVSE id is taken as the connector id.
"""

from __future__ import annotations

from typing import Any

from csms.versions import spec
from operations.calls import CallOutcome, CallSender, InvalidCall

__all__ = ["availability", "reset", "trigger", "unlock"]


async def reset(
    sender: CallSender,
    station_id: str,
    version: str,
    *,
    immediate: bool = True,
    timeout: float | None = None,  # noqa: ASYNC109 (the caller's deadline)
) -> CallOutcome:
    """Reboot the station now (``immediate``) or once it is idle (1.6: a soft reset)."""
    if spec(version).generation == 1:
        payload: dict[str, Any] = {"type": "Hard" if immediate else "Soft"}
    else:
        payload = {"type": "Immediate" if immediate else "OnIdle"}
    return await sender.send(station_id, version, "Reset", payload, timeout=timeout)


async def unlock(
    sender: CallSender,
    station_id: str,
    version: str,
    *,
    connector_id: int,
    evse_id: int | None = None,
    timeout: float | None = None,  # noqa: ASYNC109
) -> CallOutcome:
    """Unlock a connector (2.0.1 needs its EVSE; 1.6 only the connector)."""
    if spec(version).generation == 1:
        payload: dict[str, Any] = {"connectorId": connector_id}
    else:
        if evse_id is None:
            raise InvalidCall("an OCPP 2.0.1 unlock names the EVSE (evse_id)", field="evse_id")
        payload = {"evseId": evse_id, "connectorId": connector_id}
    return await sender.send(station_id, version, "UnlockConnector", payload, timeout=timeout)


async def availability(
    sender: CallSender,
    station_id: str,
    version: str,
    *,
    operative: bool,
    evse_id: int | None = None,
    connector_id: int | None = None,
    timeout: float | None = None,  # noqa: ASYNC109
) -> CallOutcome:
    """Make the station, an EVSE or a connector available (``operative``) or not."""
    if spec(version).generation == 1:
        payload: dict[str, Any] = {
            "connectorId": connector_id if connector_id is not None else (evse_id or 0),
            "type": "Operative" if operative else "Inoperative",
        }
    else:
        payload = {"operationalStatus": "Operative" if operative else "Inoperative"}
        if evse_id is not None:
            evse: dict[str, Any] = {"id": evse_id}
            if connector_id is not None:
                evse["connectorId"] = connector_id
            payload["evse"] = evse
        elif connector_id is not None:
            raise InvalidCall(
                "an OCPP 2.0.1 connector is named with its EVSE (evse_id)", field="evse_id"
            )
    return await sender.send(station_id, version, "ChangeAvailability", payload, timeout=timeout)


async def trigger(
    sender: CallSender,
    station_id: str,
    version: str,
    *,
    message: str,
    evse_id: int | None = None,
    connector_id: int | None = None,
    timeout: float | None = None,  # noqa: ASYNC109
) -> CallOutcome:
    """Ask the station to send ``message`` now (a name of the version's
    MessageTriggerEnumType, e.g. StatusNotification, Heartbeat, MeterValues)."""
    payload: dict[str, Any] = {"requestedMessage": message}
    if spec(version).generation == 1:
        connector = connector_id if connector_id is not None else evse_id
        if connector is not None:
            payload["connectorId"] = connector
    elif evse_id is not None:
        evse: dict[str, Any] = {"id": evse_id}
        if connector_id is not None:
            evse["connectorId"] = connector_id
        payload["evse"] = evse
    return await sender.send(station_id, version, "TriggerMessage", payload, timeout=timeout)
