"""Every OCPP action of both versions is covered: each station-to-CSMS action a real station
sends through the embedded CSMS gets an answer other than NotSupported / NotImplemented, and
``docs/coverage.md`` (each action, both directions, and where its data can be read) is what
:func:`render` makes of the schema table, so it cannot drift.

After adding a handler or a read route: ``.venv/bin/python -m tests.unit.test_coverage``
rewrites the document.
"""

from __future__ import annotations

import importlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from api.actions import CSMS_ACTIONS
from cli.processes import Embedded, embedded
from csms.config import Settings
from csms.rpc import RpcError
from csms.versions import OcppVersion, spec, supported
from manager.common.pnc import WRAPPED_HANDLERS
from manager.v16.results.data_transfer import WRAPPED_RESULTS
from ocpp_schemas import Direction, actions
from services.pnc import CSMS_MESSAGES, PNC_VENDOR_ID, STATION_MESSAGES
from tests.ocpp_payloads import build

DOC = Path(__file__).resolve().parents[2] / "docs" / "coverage.md"
BOTH_WAYS = "DataTransfer"
STATION = "/v1/stations/{id}"

READ_AT: Mapping[OcppVersion, Mapping[str, str]] = {
    OcppVersion.OCPP201: {
        "Authorize": "answered from the token store (`/v1/tokens`)",
        "BootNotification": f"`{STATION}` (registration, boot facts)",
        "ClearedChargingLimit": f"`{STATION}/charging` (limits)",
        "DataTransfer": "answered by the vendor extension registered for its vendorId",
        "FirmwareStatusNotification": f"`{STATION}/firmware`; event log",
        "Get15118EVCertificate": "answered from the contract-certificate provider",
        "GetCertificateStatus": "answered from the OCSP responder",
        "Heartbeat": f"`{STATION}` (last seen)",
        "LogStatusNotification": f"`{STATION}/logs`; event log",
        "MeterValues": f"`{STATION}/meter-values?evse=`",
        "NotifyChargingLimit": f"`{STATION}/charging` (limits)",
        "NotifyCustomerInformation": f"`{STATION}/customer-information`",
        "NotifyDisplayMessages": f"`{STATION}/display-messages`",
        "NotifyEVChargingNeeds": f"`{STATION}/charging` (needs)",
        "NotifyEVChargingSchedule": f"`{STATION}/charging` (schedules)",
        "NotifyEvent": f"`{STATION}/events`",
        "NotifyMonitoringReport": f"`{STATION}/monitors`",
        "NotifyReport": f"`{STATION}/variables`",
        "PublishFirmwareStatusNotification": f"`{STATION}/firmware`",
        "ReportChargingProfiles": f"`{STATION}/charging` (profiles, profile_reports)",
        "ReservationStatusUpdate": f"`{STATION}/reservations`",
        "SecurityEventNotification": "event log",
        "SignCertificate": "answered; the signed certificate follows in CertificateSigned",
        "StatusNotification": f"`{STATION}` (connectors)",
        "TransactionEvent": "`/v1/transactions`",
    },
    OcppVersion.OCPP16: {
        "Authorize": "answered from the token store (`/v1/tokens`)",
        "BootNotification": f"`{STATION}` (registration, boot facts)",
        "DataTransfer": "answered by the vendor extension registered for its vendorId",
        "DiagnosticsStatusNotification": f"`{STATION}/logs`; event log",
        "FirmwareStatusNotification": f"`{STATION}/firmware`; event log",
        "Heartbeat": f"`{STATION}` (last seen)",
        "LogStatusNotification": f"`{STATION}/logs`; event log",
        "MeterValues": "`/v1/transactions` (readings)",
        "SecurityEventNotification": "event log",
        "SignCertificate": "answered; the signed certificate follows in CertificateSigned",
        "SignedFirmwareStatusNotification": f"`{STATION}/firmware`; event log",
        "StartTransaction": "`/v1/transactions`",
        "StatusNotification": f"`{STATION}` (connectors)",
        "StopTransaction": "`/v1/transactions`",
    },
}
"""Where what a station sends can be read, per station-initiated action."""

WRAPPED_READ_AT: Mapping[str, str] = {
    "Authorize": "answered from the token store and the OCSP responder (C07)",
    "Get15118EVCertificate": "answered from the contract-certificate provider",
    "GetCertificateStatus": "answered from the OCSP responder",
    "SignCertificate": "answered; the signed chain follows in a wrapped CertificateSigned",
}
"""Where what a 1.6 charge point sends wrapped (ISO 15118 Plug & Charge) can be read."""


def station_actions(version: OcppVersion) -> list[str]:
    """The actions a station may send in ``version`` (the schemas less the CSMS's own)."""
    csms = CSMS_ACTIONS[version]
    return sorted(a for a in actions(version) if a not in csms or a == BOTH_WAYS)


def _registry(version: OcppVersion) -> Any:
    return importlib.import_module(spec(version).handlers)


def render() -> str:
    """docs/coverage.md, from the schemas, the CSMS action table and the handler registries."""
    lines = [
        "# OCPP coverage",
        "",
        "Every action of each supported version, both directions. Generated by",
        "`python -m tests.unit.test_coverage` from the OCA schemas, `api/actions.py` and the",
        "handler registries; `tests/unit/test_coverage.py` fails when this file is stale.",
        "",
        "- **station → CSMS**: *handled* means a handler answers it (anything else is answered",
        "  NotSupported); the last column says where what it carries can be read.",
        "- **CSMS → station**: sent with `POST /v1/stations/{id}/calls/{Action}` (outcome in",
        "  `/v1/stations/{id}/calls`); *applied* means the manager also stores what the answer",
        "  says (station state routes: `/variables`, `/configuration`, `/local-list`,",
        "  `/certificates`).",
    ]
    for version in supported():
        registry = _registry(version)
        handlers, results = registry.HANDLERS, getattr(registry, "RESULT_HANDLERS", {})
        lines += ["", f"## OCPP {version.value.removeprefix('ocpp')}", ""]
        lines += ["| action | direction | status | read at |", "|---|---|---|---|"]
        csms = CSMS_ACTIONS[version]
        for action in sorted(actions(version)):
            rows = []
            if action not in csms or action == BOTH_WAYS:
                status = "handled" if action in handlers else "not handled (NotSupported)"
                read = READ_AT[version].get(action, "—") if action in handlers else "—"
                rows.append(("station → CSMS", status, read))
            if action in csms:
                status = "sent, answer applied" if action in results else "sent"
                rows.append(("CSMS → station", status, "call record"))
            for direction, status, read in rows:
                lines.append(f"| {action} | {direction} | {status} | {read} |")
    lines += _wrapped_table()
    return "\n".join(lines) + "\n"


def _wrapped_table() -> list[str]:
    """The 1.6 DataTransfer-wrapped ISO 15118 messages (OCA application note "Using ISO
    15118 Plug & Charge with OCPP 1.6"), both directions."""
    lines = [
        "",
        "## OCPP 1.6: ISO 15118 Plug & Charge wrapped in DataTransfer",
        "",
        f"vendorId `{PNC_VENDOR_ID}`, messageId = the 2.0.1 action, `data` = the JSON text",
        "of its 2.0.1 payload. CSMS → station: sent with",
        "`POST /v1/stations/{id}/iso15118/{messageId}` (2.0.1 stations get the 2.0.1 call",
        "itself); *applied* means the answer lands in `/v1/stations/{id}/certificates` as a",
        "2.0.1 station's does.",
        "",
        "| messageId | direction | status | read at |",
        "|---|---|---|---|",
    ]
    for message in sorted(STATION_MESSAGES | CSMS_MESSAGES):
        if message in STATION_MESSAGES:
            handled = message in WRAPPED_HANDLERS
            status = "handled" if handled else "not handled (UnknownMessageId)"
            read = WRAPPED_READ_AT.get(message, "—") if handled else "—"
            lines.append(f"| {message} | station → CSMS | {status} | {read} |")
        if message in CSMS_MESSAGES:
            status = "sent, answer applied" if message in WRAPPED_RESULTS else "sent"
            read = (
                "`/v1/stations/{id}/certificates`" if message in WRAPPED_RESULTS else "call record"
            )
            lines.append(f"| {message} | CSMS → station | {status} | {read} |")
    return lines


def test_docs_coverage_is_generated_from_the_schema_table() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/coverage.md is stale: run .venv/bin/python -m tests.unit.test_coverage"
    )


def test_every_wrapped_station_message_is_handled_and_says_where_it_is_read() -> None:
    assert set(WRAPPED_HANDLERS) == set(STATION_MESSAGES) == set(WRAPPED_READ_AT)


def test_every_handled_station_action_says_where_its_data_is_read() -> None:
    for version in supported():
        handled = set(_registry(version).HANDLERS)
        assert handled <= set(station_actions(version)), version
        missing = handled - set(READ_AT[version])
        assert not missing, f"{version}: no READ_AT entry for {sorted(missing)}"


ADMIN = "bootstrap-admin-key-for-tests"


@pytest.fixture
async def running() -> AsyncIterator[Embedded]:
    values: dict[str, Any] = {
        "listen_port": 0,
        "api_port": 0,
        "api_admin_key": ADMIN,
        "unknown_stations": "accept",
        "ping_interval": None,
        "ping_timeout": None,
    }
    async with embedded(Settings(**values)) as csms:
        yield csms


def caller(
    ws: ClientConnection, prefix: str
) -> Callable[[str, dict[str, Any]], Awaitable[list[Any]]]:
    """Send a Call on ``ws`` and return its answer frame; CSMS calls meanwhile are refused."""
    ids = itertools.count(1)

    async def call(action: str, payload: dict[str, Any]) -> list[Any]:
        message_id = f"{prefix}{next(ids)}"
        await ws.send(json.dumps([2, message_id, action, payload]))
        while True:
            frame = json.loads(await ws.recv())
            if frame[0] == 2:
                await ws.send(json.dumps([4, frame[1], "NotSupported", "", {}]))
                continue
            return list(frame)

    return call


REFUSED = {"NotSupported", "NotImplemented"}


@pytest.mark.parametrize("version", supported(), ids=lambda v: v.value)
async def test_every_station_action_is_answered_by_a_handler(
    running: Embedded, version: OcppVersion
) -> None:
    station_id = f"COVER-{version.value}"
    url = running.gateway.url_for(station_id)
    refused: dict[str, str] = {}
    async with connect(url, subprotocols=[version.value]) as ws:  # type: ignore[list-item]
        call = caller(ws, "c")

        boot = await call("BootNotification", build(version, "BootNotification", Direction.REQUEST))
        assert boot[0] == 3 and boot[2]["status"] == "Accepted", boot
        for action in station_actions(version):
            answer = await call(action, build(version, action, Direction.REQUEST))
            if answer[0] == 4 and answer[2] in REFUSED:
                refused[action] = answer[2]
    assert refused == {}, f"{version.value}: answered {refused}"


def _wrong_type(value: Any) -> Any:
    """A value of another JSON type than ``value``'s."""
    return 12345 if isinstance(value, (dict, list, str)) else ["not", "this"]


@pytest.mark.parametrize("version", supported(), ids=lambda v: v.value)
async def test_every_station_action_refuses_an_invalid_payload_with_the_versions_code(
    running: Embedded, version: OcppVersion
) -> None:
    """An unknown field (or missing required ones) and a field of the wrong type, for every
    station action: the version's schema CallError, naming what failed, before any handler."""
    codes = spec(version)
    structural = {
        codes.code(RpcError.OCCURRENCE_CONSTRAINT),
        codes.code(RpcError.PROPERTY_CONSTRAINT),
        codes.code(RpcError.FORMAT_VIOLATION),
    }
    station_id = f"INVALID-{version.value}"
    wrong: dict[str, list[Any]] = {}
    async with connect(running.gateway.url_for(station_id), subprotocols=[version.value]) as ws:  # type: ignore[list-item]
        call = caller(ws, "i")

        boot = await call("BootNotification", build(version, "BootNotification", Direction.REQUEST))
        assert boot[0] == 3, boot
        for action in station_actions(version):
            unknown = await call(action, {"notAFieldOfThisMessage": 1})
            if unknown[0] != 4 or unknown[2] not in structural or not unknown[3]:
                wrong[f"{action} unknown field"] = unknown
            valid = build(version, action, Direction.REQUEST)
            if not valid:
                continue
            field = next(iter(valid))
            typed = await call(action, {**valid, field: _wrong_type(valid[field])})
            if typed[0] != 4 or typed[2] != codes.code(RpcError.TYPE_CONSTRAINT):
                wrong[f"{action} {field}"] = typed
            elif field not in json.dumps(typed[3:]):
                wrong[f"{action} {field} not named"] = typed
    assert wrong == {}, f"{version.value}: {wrong}"


if __name__ == "__main__":
    DOC.write_text(render(), encoding="utf-8")
