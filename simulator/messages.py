"""What a simulated station says, per OCPP version: one :class:`Dialect` each.

A dialect builds the station's requests (boot, status, authorize, the three steps of a
charging session) and decides its answers to CSMS calls. Payloads are minimal and valid
against the OCA schemas; values that matter to the CSMS (energy register, timestamps, seqNo,
transaction ids) are real.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from csms.versions import OcppVersion

__all__ = ["Answer", "Dialect", "SessionState", "dialect_for", "utc_now"]

VENDOR = "csms-simulator"
MODEL = "SIM-1"
ENERGY = "Energy.Active.Import.Register"


_second: list[Any] = [-1, ""]
"""The last whole second formatted by :func:`utc_now` and its text (a simulator formats one
timestamp per message; the date part changes once a second)."""


def utc_now() -> str:
    """Now as OCPP writes it: ISO 8601 UTC with milliseconds and a ``Z``."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{int((now - second) * 1000):03d}Z"


@dataclass(slots=True)
class SessionState:
    """One charging session of a simulated station."""

    token: str
    connector: int = 1
    transaction_id: str | None = None
    """2.0.1: chosen by the station; 1.6: given by the CSMS in the StartTransaction answer."""
    seq_no: int = 0
    energy_wh: int = 0
    remote_start_id: int | None = None


@dataclass(slots=True)
class Answer:
    """A station's answer to a CSMS call: a CallResult payload or a CallError, and what the
    station does next (``follow_up``: a message to send, e.g. after TriggerMessage)."""

    payload: dict[str, Any] | None = None
    error_code: str | None = None
    error_description: str = ""
    follow_up: str | None = None
    """``boot``, ``heartbeat``, ``status``, ``start`` (remote start) or ``stop``."""
    new_password: str | None = None
    """A Basic auth password the CSMS set: use it from the next connection on."""
    remote_start: dict[str, Any] = field(default_factory=dict)


class Dialect(Protocol):
    version: OcppVersion
    occupied: str
    """The connector status while a session runs."""

    def boot(self, reason: str = "PowerUp") -> tuple[str, dict[str, Any]]: ...
    def status(self, connector: int, status: str) -> tuple[str, dict[str, Any]]: ...
    def authorize(self, token: str) -> tuple[str, dict[str, Any]]: ...
    def authorized(self, answer: dict[str, Any]) -> bool: ...
    def start(self, session: SessionState) -> tuple[str, dict[str, Any]]: ...
    def started(self, session: SessionState, answer: dict[str, Any]) -> None: ...
    def meter(self, session: SessionState) -> tuple[str, dict[str, Any]]: ...
    def stop(self, session: SessionState) -> tuple[str, dict[str, Any]]: ...
    def answer(self, action: str, payload: dict[str, Any]) -> Answer: ...


class _V201:
    version = OcppVersion.OCPP201
    occupied = "Occupied"

    def boot(self, reason: str = "PowerUp") -> tuple[str, dict[str, Any]]:
        station = {"model": MODEL, "vendorName": VENDOR, "firmwareVersion": "1.0"}
        return "BootNotification", {"reason": reason, "chargingStation": station}

    def status(self, connector: int, status: str) -> tuple[str, dict[str, Any]]:
        payload = {
            "timestamp": utc_now(),
            "connectorStatus": status,
            "evseId": connector,
            "connectorId": 1,
        }
        return "StatusNotification", payload

    def authorize(self, token: str) -> tuple[str, dict[str, Any]]:
        return "Authorize", {"idToken": _id_token(token)}

    def authorized(self, answer: dict[str, Any]) -> bool:
        return bool(answer.get("idTokenInfo", {}).get("status") == "Accepted")

    def start(self, session: SessionState) -> tuple[str, dict[str, Any]]:
        info: dict[str, Any] = {"transactionId": session.transaction_id}
        payload: dict[str, Any] = {
            "eventType": "Started",
            "timestamp": utc_now(),
            "triggerReason": "Authorized" if session.remote_start_id is None else "RemoteStart",
            "seqNo": session.seq_no,
            "transactionInfo": info,
            "idToken": _id_token(session.token),
            "evse": {"id": session.connector, "connectorId": 1},
            "meterValue": [_meter_value_201(session.energy_wh, "Transaction.Begin")],
        }
        if session.remote_start_id is not None:
            info["remoteStartId"] = session.remote_start_id
        return "TransactionEvent", payload

    def started(self, session: SessionState, answer: dict[str, Any]) -> None:
        session.seq_no += 1

    def meter(self, session: SessionState) -> tuple[str, dict[str, Any]]:
        payload = {
            "eventType": "Updated",
            "timestamp": utc_now(),
            "triggerReason": "MeterValuePeriodic",
            "seqNo": session.seq_no,
            "transactionInfo": {"transactionId": session.transaction_id},
            "meterValue": [_meter_value_201(session.energy_wh, "Sample.Periodic")],
        }
        session.seq_no += 1
        return "TransactionEvent", payload

    def stop(self, session: SessionState) -> tuple[str, dict[str, Any]]:
        payload = {
            "eventType": "Ended",
            "timestamp": utc_now(),
            "triggerReason": "StopAuthorized",
            "seqNo": session.seq_no,
            "transactionInfo": {"transactionId": session.transaction_id, "stoppedReason": "Local"},
            "idToken": _id_token(session.token),
            "meterValue": [_meter_value_201(session.energy_wh, "Transaction.End")],
        }
        session.seq_no += 1
        return "TransactionEvent", payload

    def answer(self, action: str, payload: dict[str, Any]) -> Answer:
        if (shared := _shared_answer(action, payload)) is not None:
            return shared
        if action == "RequestStartTransaction":
            return Answer({"status": "Accepted"}, follow_up="start", remote_start=payload)
        if action == "RequestStopTransaction":
            return Answer({"status": "Accepted"}, follow_up="stop")
        if action == "CostUpdated":
            return Answer({})
        if action == "GetLocalListVersion":
            return Answer({"versionNumber": 0})
        if action == "GetVariables":
            results = [_get_variable_201(item) for item in payload.get("getVariableData", [])]
            return Answer({"getVariableResult": results})
        if action == "SetVariables":
            return _set_variables_201(payload)
        return Answer(error_code="NotImplemented", error_description=f"{action} not simulated")


class _V16:
    version = OcppVersion.OCPP16
    occupied = "Charging"

    def boot(self, reason: str = "PowerUp") -> tuple[str, dict[str, Any]]:
        payload = {"chargePointVendor": VENDOR, "chargePointModel": MODEL, "firmwareVersion": "1.0"}
        return "BootNotification", payload

    def status(self, connector: int, status: str) -> tuple[str, dict[str, Any]]:
        payload = {
            "connectorId": connector,
            "errorCode": "NoError",
            "status": status,
            "timestamp": utc_now(),
        }
        return "StatusNotification", payload

    def authorize(self, token: str) -> tuple[str, dict[str, Any]]:
        return "Authorize", {"idTag": token}

    def authorized(self, answer: dict[str, Any]) -> bool:
        return bool(answer.get("idTagInfo", {}).get("status") == "Accepted")

    def start(self, session: SessionState) -> tuple[str, dict[str, Any]]:
        payload = {
            "connectorId": session.connector,
            "idTag": session.token,
            "meterStart": session.energy_wh,
            "timestamp": utc_now(),
        }
        return "StartTransaction", payload

    def started(self, session: SessionState, answer: dict[str, Any]) -> None:
        session.transaction_id = str(answer.get("transactionId"))

    def meter(self, session: SessionState) -> tuple[str, dict[str, Any]]:
        sample = {"value": str(session.energy_wh), "measurand": ENERGY, "unit": "Wh"}
        payload = {
            "connectorId": session.connector,
            "transactionId": int(session.transaction_id or 0),
            "meterValue": [{"timestamp": utc_now(), "sampledValue": [sample]}],
        }
        return "MeterValues", payload

    def stop(self, session: SessionState) -> tuple[str, dict[str, Any]]:
        payload = {
            "transactionId": int(session.transaction_id or 0),
            "meterStop": session.energy_wh,
            "timestamp": utc_now(),
            "idTag": session.token,
            "reason": "Local",
        }
        return "StopTransaction", payload

    def answer(self, action: str, payload: dict[str, Any]) -> Answer:
        if (shared := _shared_answer(action, payload)) is not None:
            return shared
        if action == "RemoteStartTransaction":
            return Answer({"status": "Accepted"}, follow_up="start", remote_start=payload)
        if action == "RemoteStopTransaction":
            return Answer({"status": "Accepted"}, follow_up="stop")
        if action == "GetLocalListVersion":
            return Answer({"listVersion": 0})
        if action == "GetConfiguration":
            keys = [
                {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
                {"key": "MeterValueSampleInterval", "readonly": False, "value": "60"},
            ]
            wanted = payload.get("key")
            if wanted:
                known = {item["key"] for item in keys}
                found = [item for item in keys if item["key"] in wanted]
                unknown = [key for key in wanted if key not in known]
                return Answer({"configurationKey": found, "unknownKey": unknown})
            return Answer({"configurationKey": keys})
        if action == "ChangeConfiguration":
            if payload.get("key") == "AuthorizationKey":
                # Security whitepaper: the key is the password's octets, hex-encoded.
                try:
                    password = bytes.fromhex(str(payload.get("value"))).decode()
                except ValueError:
                    return Answer({"status": "Rejected"})
                return Answer({"status": "Accepted"}, new_password=password)
            return Answer({"status": "Accepted"})
        return Answer(error_code="NotImplemented", error_description=f"{action} not simulated")


def _shared_answer(action: str, payload: dict[str, Any]) -> Answer | None:
    """The answers both versions give alike (same action names, same payloads); None for
    the rest, which each dialect decides."""
    if action in ("Reset", "ChangeAvailability", "ClearCache", "SendLocalList"):
        return Answer({"status": "Accepted"})
    if action == "UnlockConnector":
        return Answer({"status": "Unlocked"})
    if action == "DataTransfer":
        return Answer({"status": "UnknownVendorId"})
    if action == "TriggerMessage":
        follow = {
            "BootNotification": "boot",
            "Heartbeat": "heartbeat",
            "StatusNotification": "status",
        }.get(str(payload.get("requestedMessage")))
        if follow is None:
            return Answer({"status": "NotImplemented"})
        return Answer({"status": "Accepted"}, follow_up=follow)
    return None


def _id_token(token: str) -> dict[str, str]:
    return {"idToken": token, "type": "ISO14443"}


def _meter_value_201(energy_wh: int, context: str) -> dict[str, Any]:
    sample = {"value": energy_wh, "measurand": ENERGY, "context": context}
    return {"timestamp": utc_now(), "sampledValue": [sample]}


def _get_variable_201(item: dict[str, Any]) -> dict[str, Any]:
    component, variable = item.get("component", {}), item.get("variable", {})
    result: dict[str, Any] = {"component": component, "variable": variable}
    known = {
        ("OCPPCommCtrlr", "HeartbeatInterval"): "300",
        ("SampledDataCtrlr", "TxUpdatedInterval"): "60",
    }
    value = known.get((component.get("name"), variable.get("name")))
    if value is None:
        result["attributeStatus"] = "UnknownVariable"
    else:
        result["attributeStatus"] = "Accepted"
        result["attributeValue"] = value
    return result


def _set_variables_201(payload: dict[str, Any]) -> Answer:
    results, new_password = [], None
    for item in payload.get("setVariableData", []):
        component, variable = item.get("component", {}), item.get("variable", {})
        if (component.get("name"), variable.get("name")) == ("SecurityCtrlr", "BasicAuthPassword"):
            new_password = str(item.get("attributeValue"))
        results.append(
            {"component": component, "variable": variable, "attributeStatus": "Accepted"}
        )
    return Answer({"setVariableResult": results}, new_password=new_password)


_DIALECTS: dict[OcppVersion, Dialect] = {OcppVersion.OCPP201: _V201(), OcppVersion.OCPP16: _V16()}


def dialect_for(version: OcppVersion) -> Dialect:
    """The dialect of ``version`` (2.0.1 and 1.6J; a newer version reuses the closest)."""
    return _DIALECTS.get(version) or _DIALECTS[OcppVersion.OCPP201]
