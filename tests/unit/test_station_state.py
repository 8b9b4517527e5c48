"""What stations report about themselves: the store contract and the handlers that fill it.

The contract tests (``test_store_*``) run here against the in-memory store;
tests/integration/test_station_state_redis.py collects them again with a Redis store. The
handler tests feed stations' answers through the version's router (``handle_result``), the
way the manager does, and NotifyReport through its handler.
"""

from __future__ import annotations

from typing import Any

import pytest

from csms.envelope import Envelope, Kind, OriginalCall
from csms.versions import OcppVersion
from manager.router import Deps, default_router
from manager.v16 import HANDLERS as HANDLERS_16
from manager.v201 import HANDLERS as HANDLERS_201
from ocpp_schemas import Direction, validate
from services.station_state import (
    MAX_CONFIGURATION_KEYS,
    MAX_VARIABLES,
    AttributeTraits,
    AttributeValue,
    CertificateHash,
    CertificateInstall,
    ConfigurationEntry,
    DeviceVariable,
    InstalledCertificate,
    LocalListState,
    MemoryStationStateStore,
    ReportPart,
    StationStateStore,
    VariableCharacteristics,
    VariableRef,
    VariableUpdate,
)
from tests.unit import handler_harness

T1 = "2026-01-15T12:00:00.000Z"
T2 = "2026-01-15T12:05:00.000Z"
STATION = "CS:1/a"


@pytest.fixture
def station_state() -> StationStateStore:
    return MemoryStationStateStore()


def ref(component: str, variable: str, **more: Any) -> VariableRef:
    return VariableRef(component=component, variable=variable, **more)


def value(
    text: str | None, source: str = "GetVariables", at: str = T1, **more: Any
) -> AttributeValue:
    return AttributeValue(value=text, source=source, updated_at=at, **more)


def set_value(r: VariableRef, text: str | None, attribute: str = "Actual") -> VariableUpdate:
    return VariableUpdate(ref=r, values={attribute: value(text)})


def reported(r: VariableRef, text: str, **traits: Any) -> VariableUpdate:
    return VariableUpdate(
        ref=r,
        values={"Actual": value(text, "NotifyReport")},
        traits={"Actual": AttributeTraits(updated_at=T1, **traits)},
    )


def part(
    request_id: int, seq_no: int, tbc: bool, *updates: VariableUpdate, at: str = T1
) -> ReportPart:
    return ReportPart(
        request_id=request_id, seq_no=seq_no, tbc=tbc, generated_at=at, variables=list(updates)
    )


async def every_variable(
    store: StationStateStore, station: str = STATION, **filters: Any
) -> list[DeviceVariable]:
    found: list[DeviceVariable] = []
    cursor = None
    while True:
        page = await store.variables(station, cursor=cursor, **filters)
        found += page.items
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


def actual(variable: DeviceVariable) -> str | None:
    (attribute,) = [a for a in variable.attributes if a.type == "Actual"]
    assert attribute.value is not None
    return attribute.value.value


# --- the store contract: device model ------------------------------------------------------


async def test_store_keeps_each_part_of_a_variable(station_state: StationStateStore) -> None:
    power = ref("EVSE", "Power", evse_id=1)
    await station_state.update_variables(
        STATION, [reported(power, "22000", mutability="ReadOnly", persistent=True)]
    )
    characteristics = VariableCharacteristics(
        data_type="decimal", supports_monitoring=True, unit="W", max_limit=22000.5, updated_at=T1
    )
    await station_state.update_variables(
        STATION,
        [
            VariableUpdate(ref=power, characteristics=characteristics),
            set_value(power, "11000"),  # GetVariables: a value, no traits
            set_value(power, "16000", "Target"),
        ],
    )
    (variable,) = (await station_state.variables(STATION)).items
    assert variable.ref == power
    assert [a.type for a in variable.attributes] == ["Actual", "Target"]
    first, target = variable.attributes
    assert first.value == value("11000")
    assert first.traits == AttributeTraits(mutability="ReadOnly", persistent=True, updated_at=T1)
    assert target.value == value("16000") and target.traits is None
    assert variable.characteristics == characteristics


async def test_store_lists_variables_in_key_order_with_cursor_and_component_filter(
    station_state: StationStateStore,
) -> None:
    refs = [
        ref("EVSE", "Power", evse_id=1),
        ref("EVSE", "Power", evse_id=2),
        ref("EVSE", "Power", evse_id=1, connector_id=1),
        ref("EVSE Extra", "Power"),  # a component whose name starts with another's
        ref("EVSE", "Available", evse_id=1),
        ref("A:B/C%", "x:y", component_instance="1:2", variable_instance="%3A"),
        ref("OCPPCommCtrlr", "HeartbeatInterval"),
        ref("OCPPCommCtrlr", "HeartbeatInterval", component_instance="b"),
    ]
    await station_state.update_variables(
        STATION, [set_value(r, str(i)) for i, r in enumerate(refs)]
    )
    listed = await every_variable(station_state, limit=3)
    assert sorted(v.ref.key for v in listed) == [v.ref.key for v in listed]
    assert {v.ref for v in listed} == set(refs) and len(listed) == len(refs)
    assert {v.ref: actual(v) for v in listed} == {r: str(i) for i, r in enumerate(refs)}
    for limit in (1, 2, 100):
        evse = await every_variable(station_state, component="EVSE", limit=limit)
        assert [v.ref for v in evse] == sorted(
            (r for r in refs if r.component == "EVSE"), key=lambda r: r.key
        )
    odd = await every_variable(station_state, component="A:B/C%")
    assert [v.ref for v in odd] == [refs[5]]
    assert (await station_state.variables(STATION, component="Nothing")).items == []
    assert (await station_state.variables("elsewhere")).items == []


async def test_store_refuses_bad_cursors_and_limits(station_state: StationStateStore) -> None:
    await station_state.update_variables(STATION, [set_value(ref("A", "B"), "1")])
    for bad in ("nonsense", "eyJ4Ijox"):
        with pytest.raises(ValueError, match="cursor"):
            await station_state.variables(STATION, cursor=bad)
    for limit in (0, 1001):
        with pytest.raises(ValueError, match="limit"):
            await station_state.variables(STATION, limit=limit)


async def test_store_cursor_of_another_filter_continues_in_range(
    station_state: StationStateStore,
) -> None:
    refs = [ref("A", "v"), ref("B", "v1"), ref("B", "v2"), ref("C", "v")]
    await station_state.update_variables(STATION, [set_value(r, "1") for r in refs])
    first = await station_state.variables(STATION, limit=1)  # after A:...
    page = await station_state.variables(STATION, component="B", cursor=first.next_cursor)
    assert [v.ref for v in page.items] == refs[1:3] and page.next_cursor is None
    last = await station_state.variables(STATION, limit=3)  # after B:...v2
    page = await station_state.variables(STATION, component="A", cursor=last.next_cursor)
    assert page.items == []


async def test_store_applies_report_parts_in_any_order_and_each_once(
    station_state: StationStateStore,
) -> None:
    a, b, c = ref("A", "v"), ref("B", "v"), ref("C", "v")
    last = await station_state.apply_report_part(STATION, part(7, 2, False, reported(c, "c")))
    assert (last.applied, last.complete, last.parts, last.dropped) == (True, False, 1, 0)
    first = await station_state.apply_report_part(STATION, part(7, 0, True, reported(a, "a")))
    assert (first.applied, first.complete, first.parts) == (True, False, 2)
    # An operator changes A before the station repeats part 0 (a re-send with a new id).
    await station_state.update_variables(STATION, [set_value(a, "changed")])
    again = await station_state.apply_report_part(STATION, part(7, 0, True, reported(a, "a")))
    assert (again.applied, again.complete, again.parts) == (False, False, 2)
    middle = await station_state.apply_report_part(STATION, part(7, 1, True, reported(b, "b")))
    assert (middle.applied, middle.complete, middle.parts) == (True, True, 3)
    variables = {v.ref: actual(v) for v in await every_variable(station_state)}
    assert variables == {a: "changed", b: "b", c: "c"}
    # The last part repeated after completion changes nothing either.
    repeat = await station_state.apply_report_part(STATION, part(7, 2, False, reported(c, "c")))
    assert (repeat.applied, repeat.complete) == (False, True)


async def test_store_a_report_is_complete_only_with_every_part_up_to_the_last(
    station_state: StationStateStore,
) -> None:
    beyond = await station_state.apply_report_part(STATION, part(3, 3, True))
    last = await station_state.apply_report_part(STATION, part(3, 1, False))
    assert (beyond.complete, last.complete, last.parts) == (False, False, 2)
    first = await station_state.apply_report_part(STATION, part(3, 0, True))
    assert (first.complete, first.parts) == (True, 3)


async def test_store_reused_request_id_starts_a_new_report(
    station_state: StationStateStore,
) -> None:
    a = ref("A", "v")
    done = await station_state.apply_report_part(STATION, part(1, 0, False, reported(a, "old")))
    assert done.complete
    new_first = await station_state.apply_report_part(
        STATION, part(1, 1, False, reported(a, "new"), at=T2)
    )
    assert (new_first.applied, new_first.complete, new_first.parts) == (True, False, 1)
    new_zero = await station_state.apply_report_part(STATION, part(1, 0, True, at=T2))
    assert (new_zero.applied, new_zero.complete, new_zero.parts) == (True, True, 2)
    assert [actual(v) for v in await every_variable(station_state)] == ["new"]
    # Same seqNo, another generatedAt while incomplete: a different message, applied.
    await station_state.apply_report_part(STATION, part(2, 0, True, reported(a, "x"), at=T1))
    other = await station_state.apply_report_part(
        STATION, part(2, 0, True, reported(a, "y"), at=T2)
    )
    assert other.applied and [actual(v) for v in await every_variable(station_state)] == ["y"]


async def test_store_reports_of_two_stations_do_not_mix(station_state: StationStateStore) -> None:
    a = ref("A", "v")
    await station_state.apply_report_part("S1", part(1, 0, False, reported(a, "1")))
    progress = await station_state.apply_report_part("S2", part(1, 0, False, reported(a, "2")))
    assert progress.applied and progress.complete
    assert [actual(v) for v in await every_variable(station_state, "S1")] == ["1"]
    assert [actual(v) for v in await every_variable(station_state, "S2")] == ["2"]


async def test_store_bounds_the_device_model(station_state: StationStateStore) -> None:
    full = [set_value(ref("C", f"v{i:05}"), "0") for i in range(MAX_VARIABLES)]
    assert await station_state.update_variables(STATION, full) == 0
    dropped = await station_state.update_variables(
        STATION,
        [set_value(ref("C", "v00000"), "changed"), set_value(ref("C", "new"), "1")],
    )
    assert dropped == 1
    progress = await station_state.apply_report_part(
        STATION, part(1, 0, False, reported(ref("D", "new"), "1"))
    )
    assert progress.applied and progress.dropped == 1
    assert (await station_state.variables(STATION, component="D")).items == []
    everything = await every_variable(station_state, limit=1000)
    assert len(everything) == MAX_VARIABLES
    assert actual(everything[0]) == "changed"


# --- the store contract: configuration, local list, certificates, forget ------------------


def key(
    name: str, text: str | None = "1", readonly: bool = False, **more: Any
) -> ConfigurationEntry:
    return ConfigurationEntry(
        key=name,
        readonly=readonly,
        value=text,
        source=more.pop("source", "GetConfiguration"),
        updated_at=T1,
        **more,
    )


async def test_store_replaces_and_updates_the_configuration(
    station_state: StationStateStore,
) -> None:
    assert await station_state.configuration(STATION) == []
    await station_state.replace_configuration(
        STATION, [key("MeterValueSampleInterval", "60"), key("HeartbeatInterval", "300")]
    )
    await station_state.update_configuration(
        STATION,
        [key("HeartbeatInterval", "60", reboot_required=True, source="ChangeConfiguration")],
    )
    assert await station_state.configuration(STATION) == [
        key("HeartbeatInterval", "60", reboot_required=True, source="ChangeConfiguration"),
        key("MeterValueSampleInterval", "60"),
    ]
    await station_state.update_configuration(
        STATION, [key("NumberOfConnectors", "2", readonly=True)], ["MeterValueSampleInterval"]
    )
    assert [e.key for e in await station_state.configuration(STATION)] == [
        "HeartbeatInterval",
        "NumberOfConnectors",
    ]
    await station_state.replace_configuration(STATION, [key("Only")])
    assert await station_state.configuration(STATION) == [key("Only")]
    await station_state.replace_configuration(STATION, [])
    assert await station_state.configuration(STATION) == []


async def test_store_bounds_the_configuration(station_state: StationStateStore) -> None:
    keys = [key(f"K{i:04}") for i in range(MAX_CONFIGURATION_KEYS + 5)]
    assert await station_state.replace_configuration(STATION, keys) == 5
    assert await station_state.update_configuration(STATION, [key("K0000", "2"), key("New")]) == 1
    stored = await station_state.configuration(STATION)
    assert len(stored) == MAX_CONFIGURATION_KEYS
    assert stored[0] == key("K0000", "2") and "New" not in {e.key for e in stored}


async def test_store_keeps_the_local_list_version(station_state: StationStateStore) -> None:
    assert await station_state.local_list(STATION) is None
    sent = LocalListState(version=4, source="SendLocalList", updated_at=T1, update_type="Full")
    await station_state.set_local_list(STATION, sent)
    assert await station_state.local_list(STATION) == sent
    read = LocalListState(version=5, source="GetLocalListVersion", updated_at=T2)
    await station_state.set_local_list(STATION, read)
    assert await station_state.local_list(STATION) == read
    assert await station_state.local_list("other") is None


def digest(serial: str, name: str = "ab12") -> CertificateHash:
    return CertificateHash(
        hash_algorithm="SHA256", issuer_name_hash=name, issuer_key_hash="cd34", serial_number=serial
    )


def certificate(kind: str, serial: str, **more: Any) -> InstalledCertificate:
    return InstalledCertificate(
        certificate_type=kind,
        hash=digest(serial),
        source="GetInstalledCertificateIds",
        updated_at=T1,
        **more,
    )


async def test_store_replaces_certificates_by_type(station_state: StationStateStore) -> None:
    csms, v2g = certificate("CSMSRootCertificate", "01"), certificate("V2GRootCertificate", "02")
    chain = certificate("V2GCertificateChain", "03", child_hashes=[digest("04"), digest("05")])
    await station_state.replace_certificates(STATION, [csms, v2g, chain])
    state = await station_state.certificates(STATION)
    assert sorted(state.installed, key=lambda c: c.hash.serial_number) == [csms, v2g, chain]
    other = certificate("CSMSRootCertificate", "09")
    await station_state.replace_certificates(STATION, [other], types=["CSMSRootCertificate"])
    serials = {c.hash.serial_number for c in (await station_state.certificates(STATION)).installed}
    assert serials == {"09", "02", "03"}
    await station_state.replace_certificates(STATION, [], types=["V2GRootCertificate"])
    serials = {c.hash.serial_number for c in (await station_state.certificates(STATION)).installed}
    assert serials == {"09", "03"}
    await station_state.replace_certificates(STATION, [v2g])
    assert (await station_state.certificates(STATION)).installed == [v2g]


async def test_store_removes_a_certificate_by_hash_whatever_its_case(
    station_state: StationStateStore,
) -> None:
    keep, gone = certificate("CSMSRootCertificate", "0A"), certificate("MORootCertificate", "0B")
    await station_state.replace_certificates(STATION, [keep, gone])
    shouting = CertificateHash(
        hash_algorithm="SHA256", issuer_name_hash="AB12", issuer_key_hash="CD34", serial_number="0b"
    )
    await station_state.remove_certificate(STATION, shouting)
    await station_state.remove_certificate(STATION, digest("FF"))  # unknown: nothing
    assert (await station_state.certificates(STATION)).installed == [keep]


async def test_store_notes_the_latest_install_per_type(station_state: StationStateStore) -> None:
    for kind, at in (("CSMSRootCertificate", T1), ("V2GRootCertificate", T1)):
        await station_state.note_install(
            STATION, CertificateInstall(certificate_type=kind, installed_at=at)
        )
    await station_state.note_install(
        STATION, CertificateInstall(certificate_type="CSMSRootCertificate", installed_at=T2)
    )
    assert (await station_state.certificates(STATION)).installs == [
        CertificateInstall(certificate_type="CSMSRootCertificate", installed_at=T2),
        CertificateInstall(certificate_type="V2GRootCertificate", installed_at=T1),
    ]


async def test_store_forgets_a_station_and_only_it(station_state: StationStateStore) -> None:
    for station in (STATION, "CS:1"):
        await station_state.update_variables(station, [set_value(ref("A", "v"), station)])
        await station_state.replace_configuration(station, [key("K", station)])
        await station_state.set_local_list(
            station, LocalListState(version=1, source="SendLocalList", updated_at=T1)
        )
        await station_state.replace_certificates(station, [certificate("CSMSRootCertificate", "1")])
        await station_state.note_install(
            station, CertificateInstall(certificate_type="CSMSRootCertificate", installed_at=T1)
        )
    await station_state.forget(STATION)
    assert (await station_state.variables(STATION)).items == []
    assert await station_state.configuration(STATION) == []
    assert await station_state.local_list(STATION) is None
    state = await station_state.certificates(STATION)
    assert state.installed == [] and state.installs == []
    assert [actual(v) for v in await every_variable(station_state, "CS:1")] == ["CS:1"]
    assert [e.value for e in await station_state.configuration("CS:1")] == ["CS:1"]
    assert await station_state.local_list("CS:1") is not None
    assert len((await station_state.certificates("CS:1")).installed) == 1


def test_variable_keys_are_reversible_and_start_with_the_component() -> None:
    for r in (
        ref("A:B", "c|d", component_instance="%", evse_id=0, connector_id=3, variable_instance="ü"),
        ref("EVSE", "Power", evse_id=12),
        ref("", "x"),
    ):
        assert VariableRef.from_key(r.key) == r
        assert r.key.isascii() and r.key.count(":") == 5
    assert ref("A", "v", component_instance="").key == ref("A", "v").key


# --- handlers ------------------------------------------------------------------------------


class Harness201(handler_harness.Harness):
    version = OcppVersion.OCPP201
    handlers = HANDLERS_201
    station = "CS201"


class Harness16(handler_harness.Harness):
    version = OcppVersion.OCPP16
    handlers = HANDLERS_16
    station = "CP16"


@pytest.fixture
async def h201() -> Harness201:
    harness = Harness201()
    await harness.provision()
    return harness


@pytest.fixture
async def h16() -> Harness16:
    harness = Harness16()
    await harness.provision()
    return harness


async def answered(
    h: handler_harness.Harness,
    action: str,
    request: dict[str, Any],
    payload: dict[str, Any] | None = None,
    kind: Kind = Kind.RESULT,
) -> None:
    """Hand the station's answer to the router the way the worker does; the result handler
    must exist and run cleanly."""
    validate(h.version, action, Direction.REQUEST, request)
    envelope = Envelope(
        kind=kind,
        station=h.station,
        version=h.version,
        message_id="c1",
        payload=payload,
        request=OriginalCall(message_id="c1", action=action, payload=request),
    )
    router = default_router(h.version)
    assert await router.handle_result(envelope, Deps(h.services, h.settings, h.calls))


async def variables_of(
    h: handler_harness.Harness,
) -> dict[tuple[str, str, str], AttributeValue | None]:
    """(component, variable, attribute type) -> value, for every stored variable."""
    found = await every_variable(h.services.station_state, h.station)
    return {(v.ref.component, v.ref.variable, a.type): a.value for v in found for a in v.attributes}


async def test_get_variables_stores_the_values_read(h201: Harness201) -> None:
    request = {
        "getVariableData": [
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
            {
                "component": {"name": "EVSE", "evse": {"id": 1}},
                "variable": {"name": "Power"},
                "attributeType": "MaxSet",
            },
            {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "BasicAuthPassword"}},
            {"component": {"name": "Nope"}, "variable": {"name": "Nope"}},
        ]
    }
    payload = {
        "getVariableResult": [
            {
                "attributeStatus": "Accepted",
                "attributeValue": "300",
                "component": {"name": "OCPPCommCtrlr"},
                "variable": {"name": "HeartbeatInterval"},
            },
            {
                "attributeStatus": "Accepted",
                "attributeValue": "22000",
                "attributeType": "MaxSet",
                "component": {"name": "EVSE", "evse": {"id": 1}},
                "variable": {"name": "Power"},
            },
            {
                "attributeStatus": "Accepted",
                "attributeValue": "hunter2hunter2",
                "component": {"name": "SecurityCtrlr"},
                "variable": {"name": "BasicAuthPassword"},
            },
            {
                "attributeStatus": "UnknownComponent",
                "component": {"name": "Nope"},
                "variable": {"name": "Nope"},
            },
        ]
    }
    await answered(h201, "GetVariables", request, payload)
    stored = await variables_of(h201)
    assert set(stored) == {
        ("OCPPCommCtrlr", "HeartbeatInterval", "Actual"),
        ("EVSE", "Power", "MaxSet"),
        ("SecurityCtrlr", "BasicAuthPassword", "Actual"),
    }
    heartbeat = stored["OCPPCommCtrlr", "HeartbeatInterval", "Actual"]
    assert heartbeat is not None and heartbeat.value == "300" and heartbeat.source == "GetVariables"
    power = stored["EVSE", "Power", "MaxSet"]
    assert power is not None and power.value == "22000"
    secret = stored["SecurityCtrlr", "BasicAuthPassword", "Actual"]
    assert secret is not None and secret.value is None
    (evse,) = (await h201.services.station_state.variables(h201.station, component="EVSE")).items
    assert evse.ref.evse_id == 1


async def test_a_failed_get_variables_stores_nothing(h201: Harness201) -> None:
    request = {"getVariableData": [{"component": {"name": "A"}, "variable": {"name": "B"}}]}
    await answered(h201, "GetVariables", request, kind=Kind.TIMEOUT)
    await answered(h201, "GetVariables", request, kind=Kind.ERROR)
    assert await variables_of(h201) == {}


async def test_set_variables_stores_what_the_station_took(h201: Harness201) -> None:
    request = {
        "setVariableData": [
            {
                "component": {"name": "OCPPCommCtrlr"},
                "variable": {"name": "HeartbeatInterval"},
                "attributeValue": "60",
            },
            {
                "component": {"name": "TxCtrlr"},
                "variable": {"name": "EVConnectionTimeOut"},
                "attributeValue": "90",
            },
            {
                "component": {"name": "AuthCtrlr"},
                "variable": {"name": "Enabled"},
                "attributeValue": "false",
                "attributeType": "Target",
            },
        ]
    }
    payload = {
        "setVariableResult": [
            {
                "attributeStatus": "Accepted",
                "component": {"name": "OCPPCommCtrlr"},
                "variable": {"name": "HeartbeatInterval"},
            },
            {
                "attributeStatus": "RebootRequired",
                "component": {"name": "TxCtrlr"},
                "variable": {"name": "EVConnectionTimeOut"},
            },
            {
                "attributeStatus": "Rejected",
                "attributeType": "Target",
                "component": {"name": "AuthCtrlr"},
                "variable": {"name": "Enabled"},
            },
        ]
    }
    await answered(h201, "SetVariables", request, payload)
    stored = await variables_of(h201)
    assert set(stored) == {
        ("OCPPCommCtrlr", "HeartbeatInterval", "Actual"),
        ("TxCtrlr", "EVConnectionTimeOut", "Actual"),
    }
    heartbeat = stored["OCPPCommCtrlr", "HeartbeatInterval", "Actual"]
    timeout = stored["TxCtrlr", "EVConnectionTimeOut", "Actual"]
    assert heartbeat is not None and (heartbeat.value, heartbeat.reboot_required) == ("60", False)
    assert heartbeat.source == "SetVariables"
    assert timeout is not None and (timeout.value, timeout.reboot_required) == ("90", True)


async def test_set_variables_never_stores_a_password(h201: Harness201) -> None:
    entry = {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "BasicAuthPassword"}}
    request = {"setVariableData": [{**entry, "attributeValue": "Secret-Passw0rd-1234"}]}
    await answered(
        h201,
        "SetVariables",
        request,
        {"setVariableResult": [{**entry, "attributeStatus": "Accepted"}]},
    )
    stored = await variables_of(h201)
    secret = stored["SecurityCtrlr", "BasicAuthPassword", "Actual"]
    assert secret is not None and secret.value is None


REPORT_DATA: list[dict[str, Any]] = [
    {
        "component": {"name": "EVSE", "evse": {"id": 1}},
        "variable": {"name": "Power"},
        "variableAttribute": [
            {"type": "Actual", "value": "0", "mutability": "ReadOnly"},
            {"type": "MaxSet", "value": "22000", "persistent": True, "constant": True},
        ],
        "variableCharacteristics": {
            "dataType": "decimal",
            "supportsMonitoring": True,
            "unit": "W",
            "maxLimit": 22000,
        },
    },
    {
        "component": {"name": "SecurityCtrlr"},
        "variable": {"name": "BasicAuthPassword"},
        "variableAttribute": [{"mutability": "WriteOnly"}],
    },
]


def report(seq_no: int, tbc: bool, data: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "requestId": 42,
        "generatedAt": "2025-01-15T11:00:00Z",
        "seqNo": seq_no,
        "tbc": tbc,
    }
    if data:
        payload["reportData"] = data
    return payload


async def test_notify_report_fills_the_device_model(h201: Harness201) -> None:
    assert await h201.call("NotifyReport", report(1, False, REPORT_DATA[1:])) == {}
    assert await h201.call("NotifyReport", report(0, True, REPORT_DATA[:1])) == {}
    found = {v.ref.variable: v for v in await every_variable(h201.services.station_state, "CS201")}
    power = found["Power"]
    assert power.ref == VariableRef(component="EVSE", evse_id=1, variable="Power")
    by_type = {a.type: a for a in power.attributes}
    assert set(by_type) == {"Actual", "MaxSet"}
    assert by_type["Actual"].value is not None and by_type["Actual"].value.value == "0"
    assert by_type["Actual"].traits is not None
    assert by_type["Actual"].traits.mutability == "ReadOnly"
    assert (by_type["Actual"].traits.persistent, by_type["Actual"].traits.constant) == (
        False,
        False,
    )
    assert by_type["MaxSet"].traits is not None
    assert by_type["MaxSet"].traits.mutability == "ReadWrite"  # the schema's default
    assert (by_type["MaxSet"].traits.persistent, by_type["MaxSet"].traits.constant) == (True, True)
    assert power.characteristics is not None
    assert (power.characteristics.unit, power.characteristics.max_limit) == ("W", 22000)
    (password,) = found["BasicAuthPassword"].attributes
    assert password.value is None and password.traits is not None
    assert password.traits.mutability == "WriteOnly"


async def test_a_repeated_report_part_does_not_undo_a_later_change(h201: Harness201) -> None:
    await h201.call("NotifyReport", report(0, True, REPORT_DATA[:1]))
    request = {
        "setVariableData": [
            {
                "component": {"name": "EVSE", "evse": {"id": 1}},
                "variable": {"name": "Power"},
                "attributeValue": "11000",
                "attributeType": "MaxSet",
            }
        ]
    }
    payload = {
        "setVariableResult": [
            {
                "attributeStatus": "Accepted",
                "attributeType": "MaxSet",
                "component": {"name": "EVSE", "evse": {"id": 1}},
                "variable": {"name": "Power"},
            }
        ]
    }
    await answered(h201, "SetVariables", request, payload)
    await h201.call("NotifyReport", report(0, True, REPORT_DATA[:1]))  # re-sent
    maxset = (await variables_of(h201))["EVSE", "Power", "MaxSet"]
    assert maxset is not None and maxset.value == "11000"


async def test_notify_report_without_data_is_acknowledged(h201: Harness201) -> None:
    assert await h201.call("NotifyReport", report(0, False)) == {}
    assert await variables_of(h201) == {}


async def test_get_configuration_replaces_or_updates_the_configuration(h16: Harness16) -> None:
    everything = {
        "configurationKey": [
            {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
            {"key": "NumberOfConnectors", "readonly": True, "value": "2"},
            {"key": "AuthorizationKey", "readonly": False, "value": "0011223344556677"},
            {"key": "Unset", "readonly": False},
        ]
    }
    await answered(h16, "GetConfiguration", {}, everything)
    stored = {e.key: e for e in await h16.services.station_state.configuration("CP16")}
    assert {k: (e.value, e.readonly) for k, e in stored.items()} == {
        "AuthorizationKey": (None, False),
        "HeartbeatInterval": ("300", False),
        "NumberOfConnectors": ("2", True),
        "Unset": (None, False),
    }
    assert stored["HeartbeatInterval"].source == "GetConfiguration"
    some = {
        "configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "120"}],
        "unknownKey": ["Unset"],
    }
    await answered(h16, "GetConfiguration", {"key": ["HeartbeatInterval", "Unset"]}, some)
    stored = {e.key: e for e in await h16.services.station_state.configuration("CP16")}
    assert set(stored) == {"AuthorizationKey", "HeartbeatInterval", "NumberOfConnectors"}
    assert stored["HeartbeatInterval"].value == "120"
    await answered(
        h16, "GetConfiguration", {}, {"configurationKey": everything["configurationKey"][1:2]}
    )
    assert [e.key for e in await h16.services.station_state.configuration("CP16")] == [
        "NumberOfConnectors"
    ]


@pytest.mark.parametrize(
    ("status", "stored"),
    [
        ("Accepted", ("60", False)),
        ("RebootRequired", ("60", True)),
        ("Rejected", None),
        ("NotSupported", None),
    ],
)
async def test_change_configuration_stores_the_value_taken(
    h16: Harness16, status: str, stored: tuple[str, bool] | None
) -> None:
    await answered(
        h16,
        "GetConfiguration",
        {},
        {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}]},
    )
    await answered(
        h16, "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "60"}, {"status": status}
    )
    (entry,) = await h16.services.station_state.configuration("CP16")
    if stored is None:
        assert (entry.value, entry.source) == ("300", "GetConfiguration")
    else:
        assert (entry.value, entry.reboot_required) == stored
        assert (entry.source, entry.readonly) == ("ChangeConfiguration", False)


async def test_change_configuration_never_stores_the_authorization_key(h16: Harness16) -> None:
    await answered(
        h16,
        "ChangeConfiguration",
        {"key": "AuthorizationKey", "value": "00112233445566778899"},
        {"status": "Accepted"},
    )
    assert await h16.services.station_state.configuration("CP16") == []


@pytest.mark.parametrize(
    ("version", "get_version", "send"),
    [
        ("v201", {"versionNumber": 3}, {"versionNumber": 4, "updateType": "Full"}),
        ("v16", {"listVersion": 3}, {"listVersion": 4, "updateType": "Full"}),
    ],
)
async def test_local_list_version_follows_reads_and_accepted_sends(
    h201: Harness201,
    h16: Harness16,
    version: str,
    get_version: dict[str, Any],
    send: dict[str, Any],
) -> None:
    h: handler_harness.Harness = h201 if version == "v201" else h16
    store = h.services.station_state
    await answered(h, "GetLocalListVersion", {}, get_version)
    state = await store.local_list(h.station)
    assert state is not None and (state.version, state.source) == (3, "GetLocalListVersion")
    await answered(h, "SendLocalList", send, {"status": "VersionMismatch"})
    await answered(h, "SendLocalList", send, kind=Kind.TIMEOUT)
    state = await store.local_list(h.station)
    assert state is not None and state.version == 3
    await answered(h, "SendLocalList", send, {"status": "Accepted"})
    state = await store.local_list(h.station)
    assert state is not None
    assert (state.version, state.source, state.update_type) == (4, "SendLocalList", "Full")


def hash_data(serial: str) -> dict[str, str]:
    return {
        "hashAlgorithm": "SHA256",
        "issuerNameHash": "aa",
        "issuerKeyHash": "bb",
        "serialNumber": serial,
    }


async def test_certificates_of_a_201_station(h201: Harness201) -> None:
    store = h201.services.station_state
    chains = {
        "status": "Accepted",
        "certificateHashDataChain": [
            {"certificateType": "CSMSRootCertificate", "certificateHashData": hash_data("01")},
            {
                "certificateType": "V2GCertificateChain",
                "certificateHashData": hash_data("02"),
                "childCertificateHashData": [hash_data("03")],
            },
        ],
    }
    await answered(h201, "GetInstalledCertificateIds", {}, chains)
    installed = (await store.certificates("CS201")).installed
    assert {(c.certificate_type, c.hash.serial_number) for c in installed} == {
        ("CSMSRootCertificate", "01"),
        ("V2GCertificateChain", "02"),
    }
    (chain,) = [c for c in installed if c.certificate_type == "V2GCertificateChain"]
    assert [child.serial_number for child in chain.child_hashes] == ["03"]
    await answered(
        h201,
        "GetInstalledCertificateIds",
        {"certificateType": ["CSMSRootCertificate"]},
        {"status": "NotFound"},
    )
    assert [c.hash.serial_number for c in (await store.certificates("CS201")).installed] == ["02"]
    delete = {"certificateHashData": hash_data("02")}
    await answered(h201, "DeleteCertificate", delete, {"status": "Failed"})
    assert len((await store.certificates("CS201")).installed) == 1
    await answered(h201, "DeleteCertificate", delete, {"status": "Accepted"})
    assert (await store.certificates("CS201")).installed == []
    install = {
        "certificateType": "V2GRootCertificate",
        "certificate": "-----BEGIN CERTIFICATE-----",
    }
    await answered(h201, "InstallCertificate", install, {"status": "Rejected"})
    assert (await store.certificates("CS201")).installs == []
    await answered(h201, "InstallCertificate", install, {"status": "Accepted"})
    (noted,) = (await store.certificates("CS201")).installs
    assert noted.certificate_type == "V2GRootCertificate"


async def test_certificates_of_a_16_station(h16: Harness16) -> None:
    store = h16.services.station_state
    await answered(
        h16,
        "GetInstalledCertificateIds",
        {"certificateType": "ManufacturerRootCertificate"},
        {"status": "Accepted", "certificateHashData": [hash_data("10"), hash_data("11")]},
    )
    await answered(
        h16,
        "GetInstalledCertificateIds",
        {"certificateType": "CentralSystemRootCertificate"},
        {"status": "Accepted", "certificateHashData": [hash_data("20")]},
    )
    installed = (await store.certificates("CP16")).installed
    assert {(c.certificate_type, c.hash.serial_number) for c in installed} == {
        ("ManufacturerRootCertificate", "10"),
        ("ManufacturerRootCertificate", "11"),
        ("CentralSystemRootCertificate", "20"),
    }
    await answered(
        h16,
        "GetInstalledCertificateIds",
        {"certificateType": "ManufacturerRootCertificate"},
        {"status": "NotFound"},
    )
    await answered(
        h16, "DeleteCertificate", {"certificateHashData": hash_data("20")}, {"status": "NotFound"}
    )
    assert (await store.certificates("CP16")).installed == []
    await answered(
        h16,
        "InstallCertificate",
        {"certificateType": "CentralSystemRootCertificate", "certificate": "PEM"},
        {"status": "Accepted"},
    )
    (noted,) = (await store.certificates("CP16")).installs
    assert noted.certificate_type == "CentralSystemRootCertificate"
