"""Password rotation on the in-memory services and the in-process bus.

The station's answers are made the way a gateway makes them (the original call attached) and
go through the project's routers and result handlers, so these tests cover what a manager does
with them: store the new password's hash only when the station accepted it, never log it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from csms.bus import BusUnavailable
from csms.bus.memory import MemoryBroker, MemoryBus
from csms.config import Settings
from csms.credentials import (
    check_password,
    hash_password,
    password_from_authorization_key,
    verify_password,
)
from csms.envelope import Envelope, Kind, OriginalCall, decode_envelope, encode
from csms.topics import Topics
from csms.versions import OcppVersion
from manager import password_results
from manager.router import Deps, default_router
from manager.worker import Manager
from ocpp_schemas import Direction, validate
from operations import password as password_rotation
from operations.call_maker import CallMaker
from operations.password import (
    PURPOSE,
    ROTATION,
    Rotation,
    RotationRefused,
    rotate_password,
    rotation_call,
    rotation_version,
)
from services import Services, StoreUnavailable
from services.memory import (
    MemoryIdempotencyStore,
    MemoryStationRegistry,
    MemoryTokenStore,
    MemoryTransactionStore,
)
from services.models import RegistrationStatus, StationCredentials
from services.tariff import ConfiguredTariff

STATION = "CS-ROT"
OLD_PASSWORD = "old-password-0123"
OLD_HASH = hash_password(OLD_PASSWORD)
NEW_PASSWORD = "NewPassword4567890"  # 18 characters: valid for 1.6 and 2.0.1


def make_services() -> Services:
    settings = Settings()
    return Services(
        stations=MemoryStationRegistry(),
        tokens=MemoryTokenStore(),
        transactions=MemoryTransactionStore(),
        tariff=ConfiguredTariff(settings.tariff),
        idempotency=MemoryIdempotencyStore(),
    )


@pytest.fixture
async def services() -> Services:
    services = make_services()
    await services.stations.set_credentials(
        STATION, StationCredentials(security_profile=1, password_hash=OLD_HASH)
    )
    await services.stations.provision(STATION, RegistrationStatus.ACCEPTED)
    await services.stations.mark_connected(
        STATION, OcppVersion.OCPP201, "gw-1", "conn-1", "2026-01-15T12:00:00Z"
    )
    return services


def deps(services: Services) -> Deps:
    return Deps(
        services=services, settings=Settings(), calls=CallMaker(MemoryBroker().client(), Topics())
    )


def request(version: str, password: str = NEW_PASSWORD, *, marked: bool = True) -> OriginalCall:
    action, payload = rotation_call(version, password)
    return OriginalCall(
        message_id="csms-1",
        action=action,
        payload=payload,
        meta={PURPOSE: ROTATION} if marked else {},
    )


def answer(version: str, call: OriginalCall, kind: Kind = Kind.RESULT, **fields: Any) -> Envelope:
    """What the gateway publishes when the station answered (or did not)."""
    return Envelope(
        kind=kind,
        station=STATION,
        version=version,
        message_id=call.message_id,
        request=call,
        **fields,
    )


def accepted(version: str, status: str = "Accepted") -> dict[str, Any]:
    if version == OcppVersion.OCPP16:
        payload: dict[str, Any] = {"status": status}
    else:
        payload = {
            "setVariableResult": [
                {
                    "attributeType": "Actual",
                    "attributeStatus": status,
                    "component": {"name": "SecurityCtrlr"},
                    "variable": {"name": "BasicAuthPassword"},
                }
            ]
        }
    validate(version, request(version).action, Direction.RESPONSE, payload)
    return payload


async def stored_hash(services: Services) -> str | None:
    record = await services.stations.get(STATION)
    assert record is not None
    return record.password_hash


async def pending_hash(services: Services) -> str | None:
    record = await services.stations.get(STATION)
    assert record is not None
    return record.pending_password_hash


def assert_no_secret(logs: Sequence[Mapping[str, Any]], password: str = NEW_PASSWORD) -> None:
    text = json.dumps(logs, default=str)
    assert password not in text
    assert password.encode().hex().upper() not in text
    assert password.encode().hex() not in text


# --- the call ----------------------------------------------------------------------------------


def test_201_call_sets_basic_auth_password_actual() -> None:
    action, payload = rotation_call(OcppVersion.OCPP201, NEW_PASSWORD)
    validate(OcppVersion.OCPP201, action, Direction.REQUEST, payload)
    assert action == "SetVariables"
    assert payload == {
        "setVariableData": [
            {
                "attributeType": "Actual",
                "attributeValue": NEW_PASSWORD,
                "component": {"name": "SecurityCtrlr"},
                "variable": {"name": "BasicAuthPassword"},
            }
        ]
    }


def test_16_call_sends_the_password_hex_encoded_as_authorization_key() -> None:
    action, payload = rotation_call(OcppVersion.OCPP16, NEW_PASSWORD)
    validate(OcppVersion.OCPP16, action, Direction.REQUEST, payload)
    assert action == "ChangeConfiguration"
    assert payload["key"] == "AuthorizationKey"
    assert payload["value"] == NEW_PASSWORD.encode().hex().upper()
    assert password_from_authorization_key(payload["value"]) == NEW_PASSWORD


@pytest.mark.parametrize(
    ("version", "password"),
    [
        (OcppVersion.OCPP201, "too-short"),
        (OcppVersion.OCPP201, "has spaces in it, not allowed"),
        (OcppVersion.OCPP16, "twenty-one-characters"),
        (OcppVersion.OCPP16, "short"),
    ],
)
def test_call_refuses_passwords_the_version_does_not_allow(version: str, password: str) -> None:
    with pytest.raises(ValueError) as refused:
        rotation_call(version, password)
    assert password not in str(refused.value)


@pytest.mark.parametrize("version", [OcppVersion.OCPP16, OcppVersion.OCPP201])
async def test_rotate_password_publishes_a_marked_call(services: Services, version: str) -> None:
    broker = MemoryBroker()
    topics = Topics()
    async with broker.client() as gateway, broker.client() as sender:
        await gateway.subscribe(topics.outbound(version, STATION))
        with capture_logs() as logs:
            rotation = await rotate_password(
                CallMaker(sender, topics, origin="test"),
                services.stations,
                STATION,
                version,
                meta={"ticket": "7"},
            )
        message = await asyncio.wait_for(anext(aiter(gateway.messages())), 1)
    call = decode_envelope(message.payload)
    assert call.kind is Kind.CALL and call.message_id == rotation.message_id
    assert call.action == rotation.action
    assert call.meta[PURPOSE] == ROTATION and call.meta["ticket"] == "7"
    assert (
        password_rotation.password_in_request(
            version,
            OriginalCall(
                message_id=call.message_id, action=call.action or "", payload=call.payload
            ),
        )
        == rotation.password
    )
    check_password(rotation.password, version=version)
    assert rotation.password not in repr(rotation)
    assert_no_secret(logs, rotation.password)


async def test_rotation_version_refuses_what_cannot_be_rotated(services: Services) -> None:
    assert await rotation_version(services.stations, STATION) == OcppVersion.OCPP201
    with pytest.raises(RotationRefused, match="not in the registry"):
        await rotation_version(services.stations, "nobody")
    await services.stations.provision("NEVER", RegistrationStatus.ACCEPTED)
    with pytest.raises(RotationRefused, match="never connected"):
        await rotation_version(services.stations, "NEVER")
    await services.stations.mark_disconnected(STATION, "conn-1", "2026-01-15T12:01:00Z")
    with pytest.raises(RotationRefused, match="offline"):
        await rotation_version(services.stations, STATION)
    await services.stations.set_credentials(STATION, StationCredentials(security_profile=3))
    with pytest.raises(RotationRefused, match="profile 3"):
        await rotation_version(services.stations, STATION)


# --- the pending password ---------------------------------------------------------------------


class RecordingBus(MemoryBus):
    """Records the station's pending hash at the moment the call is published."""

    def __init__(self, services: Services, fail: bool = False) -> None:
        super().__init__(MemoryBroker(), 100)
        self.services, self.fail = services, fail
        self.pending_at_publish: list[str | None] = []

    async def publish(
        self, topic: str, payload: bytes, *, properties: Mapping[str, str] | None = None
    ) -> None:
        self.pending_at_publish.append(await pending_hash(self.services))
        if self.fail:
            raise BusUnavailable("broker down")
        await super().publish(topic, payload, properties=properties)


@pytest.mark.parametrize("version", [OcppVersion.OCPP16, OcppVersion.OCPP201])
async def test_pending_hash_is_recorded_before_the_call_is_sent(
    services: Services, version: str
) -> None:
    bus = RecordingBus(services)
    async with bus:
        await bus.subscribe(Topics().outbound_any_version(STATION))  # the station's gateway
        rotation = await rotate_password(
            CallMaker(bus, Topics(), origin="test"), services.stations, STATION, version
        )
    (pending,) = bus.pending_at_publish
    assert pending is not None and verify_password(rotation.password, pending)
    assert await stored_hash(services) == OLD_HASH  # the current one is untouched


async def test_pending_hash_is_cleared_when_the_call_cannot_be_sent(services: Services) -> None:
    bus = RecordingBus(services, fail=True)
    async with bus:
        with pytest.raises(BusUnavailable):
            await rotate_password(
                CallMaker(bus, Topics(), origin="test"),
                services.stations,
                STATION,
                OcppVersion.OCPP201,
            )
    assert bus.pending_at_publish[0] is not None
    assert await pending_hash(services) is None
    assert await stored_hash(services) == OLD_HASH


async def test_rotation_of_a_station_without_record_is_refused() -> None:
    bus = RecordingBus(make_services())
    async with bus:
        with pytest.raises(RotationRefused, match="not in the registry"):
            await rotate_password(
                CallMaker(bus, Topics(), origin="test"),
                bus.services.stations,
                "nobody",
                OcppVersion.OCPP16,
            )
    assert bus.pending_at_publish == []


async def set_pending(services: Services, password: str = NEW_PASSWORD) -> str:
    encoded = hash_password(password)
    assert await services.stations.set_pending_password_hash(STATION, encoded)
    return encoded


@pytest.mark.parametrize("version", [OcppVersion.OCPP16, OcppVersion.OCPP201])
async def test_accepted_rotation_promotes_the_pending_hash(
    services: Services, version: str
) -> None:
    pending = await set_pending(services)
    await default_router(version).handle_result(
        answer(version, request(version), payload=accepted(version)), deps(services)
    )
    assert await stored_hash(services) == pending
    assert await pending_hash(services) is None


async def test_accepted_answer_stores_the_requested_password_not_another_pending_one(
    services: Services,
) -> None:
    newer = await set_pending(services, "AnotherPassword0123")
    await default_router(OcppVersion.OCPP16).handle_result(
        answer(
            OcppVersion.OCPP16, request(OcppVersion.OCPP16), payload=accepted(OcppVersion.OCPP16)
        ),
        deps(services),
    )
    assert verify_password(NEW_PASSWORD, await stored_hash(services) or "")
    assert await pending_hash(services) == newer  # the newer rotation is still in flight


@pytest.mark.parametrize("version", [OcppVersion.OCPP16, OcppVersion.OCPP201])
@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (Kind.RESULT, {"status": "Rejected"}),
        (Kind.RESULT, {"status": "RebootRequired"}),
        (Kind.ERROR, {"error_code": "NotSupported", "error_description": "no"}),
        # Never written to the station (queue full, station already gone).
        (Kind.UNDELIVERED, {"error_description": "station gone"}),
    ],
)
async def test_unaccepted_rotation_clears_its_pending_hash(
    services: Services, version: str, kind: Kind, fields: dict[str, Any]
) -> None:
    await set_pending(services)
    if "status" in fields:
        fields = {"payload": accepted(version, fields["status"])}
    await default_router(version).handle_result(
        answer(version, request(version), kind, **fields), deps(services)
    )
    assert await pending_hash(services) is None
    assert await stored_hash(services) == OLD_HASH


@pytest.mark.parametrize("version", [OcppVersion.OCPP16, OcppVersion.OCPP201])
@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (Kind.TIMEOUT, {"error_description": "no answer within 30 s"}),
        (Kind.UNDELIVERED, {"error_description": "station disconnected", "sent": True}),
    ],
)
async def test_rotation_with_an_unknown_outcome_keeps_its_password_admissible(
    services: Services, version: str, kind: Kind, fields: dict[str, Any]
) -> None:
    """The station may have taken the password although no answer says so (it answered too
    late, or its socket closed after the call was written): clearing the pending hash would
    lock it out at its next login."""
    pending = await set_pending(services)
    call = request(version)
    fields = dict(fields)  # the parameter's dict is shared by both versions
    if fields.pop("sent", False):
        call = msgspec.structs.replace(call, sent_at=1.0)
    with capture_logs() as logs:
        await default_router(version).handle_result(
            answer(version, call, kind, **fields), deps(services)
        )
    assert await pending_hash(services) == pending
    assert await stored_hash(services) == OLD_HASH
    (warning,) = [entry for entry in logs if entry["event"] == "password_change_unconfirmed"]
    assert warning["log_level"] == "warning"
    assert_no_secret(logs)


@pytest.mark.parametrize("version", [OcppVersion.OCPP16, OcppVersion.OCPP201])
@pytest.mark.parametrize("kind", [Kind.RESULT, Kind.TIMEOUT])
async def test_stale_answer_does_not_clear_a_newer_pending_hash(
    services: Services, version: str, kind: Kind
) -> None:
    newer = await set_pending(services, "AnotherPassword0123")
    fields: dict[str, Any] = (
        {"payload": accepted(version, "Rejected")} if kind is Kind.RESULT else {}
    )
    await default_router(version).handle_result(
        answer(version, request(version), kind, **fields), deps(services)
    )
    assert await pending_hash(services) == newer
    assert await stored_hash(services) == OLD_HASH


# --- the answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [OcppVersion.OCPP16, OcppVersion.OCPP201])
async def test_accepted_rotation_stores_the_new_hash(services: Services, version: str) -> None:
    call = request(version)
    with capture_logs() as logs:
        assert await default_router(version).handle_result(
            answer(version, call, payload=accepted(version)), deps(services)
        )
    new_hash = await stored_hash(services)
    assert new_hash != OLD_HASH
    assert verify_password(NEW_PASSWORD, new_hash or "")
    assert not verify_password(OLD_PASSWORD, new_hash or "")
    (changed,) = [entry for entry in logs if entry["event"] == "password_changed"]
    assert changed["rotation"] is True and changed["log_level"] == "info"
    assert_no_secret(logs)


@pytest.mark.parametrize(
    ("version", "status"),
    [
        (OcppVersion.OCPP16, "Rejected"),
        (OcppVersion.OCPP16, "RebootRequired"),
        (OcppVersion.OCPP16, "NotSupported"),
        (OcppVersion.OCPP201, "Rejected"),
        (OcppVersion.OCPP201, "RebootRequired"),
        (OcppVersion.OCPP201, "UnknownVariable"),
        (OcppVersion.OCPP201, "NotSupportedAttributeType"),
    ],
)
async def test_refused_rotation_leaves_the_registry_unchanged(
    services: Services, version: str, status: str
) -> None:
    with capture_logs() as logs:
        await default_router(version).handle_result(
            answer(version, request(version), payload=accepted(version, status)), deps(services)
        )
    assert await stored_hash(services) == OLD_HASH
    (warning,) = [entry for entry in logs if entry["event"] == "password_not_changed"]
    assert warning["log_level"] == "warning" and warning["status"] == status
    assert_no_secret(logs)


@pytest.mark.parametrize("version", [OcppVersion.OCPP16, OcppVersion.OCPP201])
@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (Kind.ERROR, {"error_code": "InternalError", "error_description": "busy"}),
        (Kind.TIMEOUT, {"error_description": "no answer within 30 s"}),
        (Kind.UNDELIVERED, {"error_description": "station gone"}),
        # A CallResult that breaks the response schema counts as no answer.
        (Kind.RESULT, {"payload": {"status": "Sure"}}),
    ],
)
async def test_failed_rotation_call_leaves_the_registry_unchanged(
    services: Services, version: str, kind: Kind, fields: dict[str, Any]
) -> None:
    with capture_logs() as logs:
        await default_router(version).handle_result(
            answer(version, request(version), kind, **fields), deps(services)
        )
    assert await stored_hash(services) == OLD_HASH
    warnings = [
        entry
        for entry in logs
        if entry["event"] in ("password_not_changed", "password_change_unconfirmed")
    ]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert_no_secret(logs)


async def test_201_result_status_is_read_for_the_password_variable_only(
    services: Services,
) -> None:
    action, payload = rotation_call(OcppVersion.OCPP201, NEW_PASSWORD)
    payload["setVariableData"].insert(
        0,
        {
            "attributeValue": "60",
            "component": {"name": "OCPPCommCtrlr"},
            "variable": {"name": "HeartbeatInterval"},
        },
    )
    call = OriginalCall(message_id="csms-2", action=action, payload=payload)
    result = {
        "setVariableResult": [
            {
                "attributeStatus": "Accepted",
                "component": {"name": "OCPPCommCtrlr"},
                "variable": {"name": "HeartbeatInterval"},
            },
            {
                "attributeStatus": "Rejected",
                "component": {"name": "SecurityCtrlr"},
                "variable": {"name": "BasicAuthPassword"},
            },
        ]
    }
    with capture_logs() as logs:
        await default_router(OcppVersion.OCPP201).handle_result(
            answer(OcppVersion.OCPP201, call, payload=result), deps(services)
        )
    assert await stored_hash(services) == OLD_HASH
    variables = {entry["variable"]: entry for entry in logs if entry["event"] == "variable_set"}
    assert variables["HeartbeatInterval"]["value"] == "60"
    assert variables["BasicAuthPassword"]["value"] == password_rotation.REDACTED
    assert_no_secret(logs)


@pytest.mark.parametrize("version", [OcppVersion.OCPP16, OcppVersion.OCPP201])
async def test_unmarked_password_change_is_stored_too(services: Services, version: str) -> None:
    """A station that took a password from any CSMS call uses it: the registry must follow."""
    with capture_logs() as logs:
        await default_router(version).handle_result(
            answer(version, request(version, marked=False), payload=accepted(version)),
            deps(services),
        )
    assert verify_password(NEW_PASSWORD, await stored_hash(services) or "")
    (changed,) = [entry for entry in logs if entry["event"] == "password_changed"]
    assert changed["rotation"] is False
    assert_no_secret(logs)


async def test_accepted_rotation_of_a_station_without_record_creates_nothing() -> None:
    services = make_services()
    with capture_logs() as logs:
        await default_router(OcppVersion.OCPP201).handle_result(
            answer(
                OcppVersion.OCPP201,
                request(OcppVersion.OCPP201),
                payload=accepted(OcppVersion.OCPP201),
            ),
            deps(services),
        )
    assert await services.stations.get(STATION) is None
    assert any(entry["event"] == "password_not_changed" for entry in logs)


async def test_other_configuration_keys_still_log_their_values(services: Services) -> None:
    call = OriginalCall(
        message_id="c",
        action="ChangeConfiguration",
        payload={"key": "HeartbeatInterval", "value": "60"},
    )
    with capture_logs() as logs:
        await default_router(OcppVersion.OCPP16).handle_result(
            answer(OcppVersion.OCPP16, call, payload={"status": "Accepted"}), deps(services)
        )
    (entry,) = [e for e in logs if e["event"] == "configuration_change"]
    assert entry["value"] == "60"
    assert await stored_hash(services) == OLD_HASH


class FlakyRegistry(MemoryStationRegistry):
    """Fails ``set_password_hash`` the first ``failures`` times (a Redis blip)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def set_password_hash(self, station_id: str, password_hash: str) -> bool:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("Redis at test: connection refused")
        return await super().set_password_hash(station_id, password_hash)


@pytest.mark.parametrize(("failures", "stored"), [(1, True), (99, False)])
async def test_store_outage_while_storing_is_retried_then_loud(
    monkeypatch: pytest.MonkeyPatch, failures: int, stored: bool
) -> None:
    monkeypatch.setattr(password_results, "_STORE_ATTEMPTS", 2)
    services = make_services()
    services.stations = FlakyRegistry(failures)
    await services.stations.set_credentials(
        STATION, StationCredentials(security_profile=1, password_hash=OLD_HASH)
    )
    with capture_logs() as logs:
        await default_router(OcppVersion.OCPP201).handle_result(
            answer(
                OcppVersion.OCPP201,
                request(OcppVersion.OCPP201),
                payload=accepted(OcppVersion.OCPP201),
            ),
            deps(services),
        )
    assert verify_password(NEW_PASSWORD, await stored_hash(services) or "") is stored
    if not stored:
        (error,) = [entry for entry in logs if entry["event"] == "password_not_stored"]
        assert error["log_level"] == "error" and "next connection" in error["consequence"]
    assert_no_secret(logs)


# --- through a manager on the in-process bus ---------------------------------------------------


@pytest.fixture
async def embedded(services: Services) -> AsyncIterator[tuple[MemoryBus, MemoryBus, Manager]]:
    broker = MemoryBroker()
    manager_bus, gateway_bus = broker.client(), broker.client()
    async with (
        manager_bus,
        gateway_bus,
        Manager(Settings(), manager_bus, services, compile_schemas=False) as manager,
    ):
        yield manager_bus, gateway_bus, manager


@pytest.mark.parametrize(("status", "changed"), [("Accepted", True), ("Rejected", False)])
async def test_rotation_round_trip_through_a_manager(
    services: Services,
    embedded: tuple[MemoryBus, MemoryBus, Manager],
    status: str,
    changed: bool,
) -> None:
    _, gateway_bus, manager = embedded
    topics = Topics()
    await gateway_bus.subscribe(topics.outbound(OcppVersion.OCPP201, STATION))
    version = await rotation_version(services.stations, STATION)
    rotation: Rotation = await rotate_password(manager.calls, services.stations, STATION, version)
    message = await asyncio.wait_for(anext(aiter(gateway_bus.messages())), 1)
    call = decode_envelope(message.payload)
    # The gateway answers for the station, attaching the call it sent.
    original = OriginalCall(
        message_id=call.message_id,
        action=call.action or "",
        payload=call.payload,
        meta=call.meta,
    )
    await gateway_bus.publish(
        topics.inbound(OcppVersion.OCPP201, STATION),
        encode(
            answer(OcppVersion.OCPP201, original, payload=accepted(OcppVersion.OCPP201, status))
        ),
    )
    for _ in range(100):
        await manager.idle()
        if manager.stats.results:
            break
        await asyncio.sleep(0.01)
    await manager.idle()
    new_hash = await stored_hash(services)
    assert verify_password(rotation.password, new_hash or "") is changed
    assert (new_hash == OLD_HASH) is not changed
    assert await pending_hash(services) is None
