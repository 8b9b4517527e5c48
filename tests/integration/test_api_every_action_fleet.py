"""Every CSMS-initiated action of OCPP 2.0.1 and 1.6 sent through the operator API on the real
fleet: ``csms gateway`` + two ``csms manager`` processes + ``csms api`` on the private Mosquitto
and Redis, stations built with the ``ocpp`` package.

The actions come from the schemas (every action ``api.actions`` classifies as CSMS-initiated),
their payloads from the OCA schemas (``tests.ocpp_payloads``), so an action added to either is
covered without touching this test. For each one the station must receive exactly the payload
sent, and the API must return exactly the station's answer. The station is a ``ChargePoint``
whose call handling is generic: it records what it got, checks it with the ``ocpp`` package's
own schemas, and answers with a schema-valid response built for that message.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from ocpp.exceptions import NotSupportedError
from ocpp.messages import Call, CallResult, validate_payload
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201

from api.actions import CSMS_ACTIONS, ActionKind, classify
from csms.versions import OcppVersion
from ocpp_schemas import Direction, actions
from tests.integration.fleet import API_ADMIN_KEY, Fleet, fleet_with_api
from tests.integration.test_api_fleet import until_online
from tests.ocpp_payloads import build
from tests.timing import timeout as scaled

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN = API_ADMIN_KEY
CALL_TIMEOUT = scaled(2)
"""The gateway's ``call_timeout`` for this fleet: short, so the silent station's timeout
comes quickly, and still ample for a station that answers at once."""
BATCH = 8
"""Calls in flight per station at once: well under the gateway's call queue (16)."""
ERROR_ACTION = "Reset"
"""Answered with a CallError in the error case (an action of both versions)."""
SILENT_ACTION = "TriggerMessage"
"""Never answered in the timeout case (an action of both versions)."""


def csms_actions(version: OcppVersion) -> list[str]:
    """Every action of ``version``'s schemas that the API classifies as CSMS-initiated."""
    return sorted(a for a in actions(version) if classify(version, a) is ActionKind.CSMS)


class GenericStation:
    """Call handling for any action: record the call, answer it from its response schema.

    Mixed into the ``ocpp`` package's ``ChargePoint`` of a version, replacing its
    ``@on``-route lookup (``_handle_call``), since a handler per action is exactly what this
    test must not need. ``silent`` actions are never answered, ``failing`` ones get a
    NotSupported CallError.
    """

    version: OcppVersion
    _ocpp_version: str
    _send: Callable[[str], Awaitable[None]]  # the ocpp package's ChargePoint provides these

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: dict[str, tuple[str, dict[str, Any]]] = {}
        """Message id → (action, payload) of every CSMS call, as it arrived."""
        self.answers: dict[str, dict[str, Any]] = {}
        """Message id → the CallResult payload sent back."""
        self.silent: set[str] = set()
        self.failing: set[str] = set()

    async def _handle_call(self, msg: Call) -> None:
        self.received[msg.unique_id] = (msg.action, copy.deepcopy(msg.payload))
        if msg.action in self.silent:
            return
        if msg.action in self.failing:
            error = NotSupportedError(
                description=f"{msg.action} is switched off here", details={"probe": msg.action}
            )
            await self._send(msg.create_call_error(error).to_json())
            return
        # The ocpp package's own schemas: a station library must accept what the API sent.
        # (It may rewrite numbers of the payload it validates, hence the copies.)
        await validate_payload(
            Call(msg.unique_id, msg.action, copy.deepcopy(msg.payload)), self._ocpp_version
        )
        payload = build(
            self.version.value,
            msg.action,
            Direction.RESPONSE,
            seed=zlib.crc32(msg.unique_id.encode()),
        )
        check = CallResult(msg.unique_id, copy.deepcopy(payload), msg.action)
        await validate_payload(check, self._ocpp_version)
        self.answers[msg.unique_id] = payload
        await self._send(msg.create_call_result(payload).to_json())


class Station201(GenericStation, ChargePoint201):
    version = OcppVersion.OCPP201

    async def boot(self) -> None:
        answer = await self.call(
            call201.BootNotification(
                charging_station={"model": "Every", "vendor_name": "Action"}, reason="PowerUp"
            )
        )
        assert answer.status == "Accepted", answer

    async def beat(self) -> None:
        answer = await self.call(call201.Heartbeat())
        assert answer.current_time, answer


class Station16(GenericStation, ChargePoint16):
    version = OcppVersion.OCPP16

    async def boot(self) -> None:
        answer = await self.call(
            call16.BootNotification(charge_point_model="Every", charge_point_vendor="Action")
        )
        assert answer.status == "Accepted", answer

    async def beat(self) -> None:
        answer = await self.call(call16.Heartbeat())
        assert answer.current_time, answer


Station = Station201 | Station16


@pytest.fixture
def fleet(mqtt_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[Fleet, str]]:
    with fleet_with_api(
        mqtt_url,
        redis_url,
        tmp_path,
        managers=2,
        extra_env={"CSMS_CALL_TIMEOUT": f"{CALL_TIMEOUT:g}"},
    ) as running:
        yield running


@pytest.fixture
async def client(fleet: tuple[Fleet, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=fleet[1], headers={"Authorization": f"Bearer {ADMIN}"}, timeout=scaled(30)
    ) as http:
        yield http


async def send(
    client: httpx.AsyncClient, station: str, action: str, payload: dict[str, Any]
) -> httpx.Response:
    """POST a call and wait for its outcome (``wait=true``); retried while the gateway's
    subscription for a station that just connected is not in place yet (offline at once)."""
    for _ in range(50):
        answer = await client.post(
            f"/v1/stations/{station}/calls/{action}", json=payload, params={"wait": "true"}
        )
        if answer.status_code != 409 or answer.json()["code"] != "station_offline":
            return answer
        await asyncio.sleep(0.1)
    raise AssertionError(f"{station} never held by a gateway")


async def every_action(client: httpx.AsyncClient, station: Station) -> list[str]:
    """Send every CSMS action of the station's version, a batch at a time, each checked
    end to end; the station sends a Heartbeat during each batch. Returns the message ids."""
    version = station.version
    names = csms_actions(version)
    message_ids = []
    for start in range(0, len(names), BATCH):
        batch = names[start : start + BATCH]
        payloads = [build(version.value, action, Direction.REQUEST) for action in batch]
        answers: Sequence[httpx.Response | None] = await asyncio.gather(
            *(send(client, station.id, a, p) for a, p in zip(batch, payloads, strict=True)),
            station.beat(),
        )
        for action, payload, answer in zip(batch, payloads, answers, strict=False):
            assert answer is not None
            where = f"{version.value} {action}"
            assert answer.status_code == 200, f"{where}: {answer.text}"
            body = answer.json()
            assert body["outcome"] == "result", f"{where}: {body}"
            assert (body["station_id"], body["version"], body["action"]) == (
                station.id,
                version.value,
                action,
            )
            message_id = body["message_id"]
            assert station.received[message_id] == (action, payload), where
            assert body["payload"] == station.answers[message_id], where
            message_ids.append(message_id)
    covered = {station.received[m][0] for m in message_ids}
    assert covered == CSMS_ACTIONS[version], (
        f"{version.value}: not covered {CSMS_ACTIONS[version] - covered}"
    )
    return message_ids


async def error_and_timeout(client: httpx.AsyncClient, station: Station) -> None:
    """One action answered with a CallError, one never answered (the gateway's timeout)."""
    version = station.version.value
    station.failing.add(ERROR_ACTION)
    station.silent.add(SILENT_ACTION)
    failing, silent = await asyncio.gather(
        send(client, station.id, ERROR_ACTION, build(version, ERROR_ACTION, Direction.REQUEST)),
        send(client, station.id, SILENT_ACTION, build(version, SILENT_ACTION, Direction.REQUEST)),
    )
    assert failing.status_code == 200, failing.text
    body = failing.json()
    assert (body["outcome"], body["error_code"]) == ("error", "NotSupported"), body
    assert body["error_description"] == f"{ERROR_ACTION} is switched off here"
    assert body["error_details"] == {"probe": ERROR_ACTION}
    assert body["payload"] is None
    assert station.received[body["message_id"]][0] == ERROR_ACTION

    assert silent.status_code == 504, silent.text
    body = silent.json()
    assert body["outcome"] == "timeout", body
    assert body["action"] == SILENT_ACTION and body["payload"] is None
    # The station did get it: it is the answer that never came.
    assert station.received[body["message_id"]][0] == SILENT_ACTION
    assert body["message_id"] not in station.answers


async def offline_at_once(client: httpx.AsyncClient, station: Station) -> None:
    """Once the station has left, a call is 409 at once: the API does not wait for it."""
    deadline = asyncio.get_running_loop().time() + scaled(20)
    while (await client.get(f"/v1/stations/{station.id}")).json()["online"]:
        assert asyncio.get_running_loop().time() < deadline, "station never went offline"
        await asyncio.sleep(0.1)
    action = csms_actions(station.version)[0]
    payload = build(station.version.value, action, Direction.REQUEST)
    # The API would wait up to 60 s for an outcome: a prompt 409 means nothing was waited for.
    async with asyncio.timeout(scaled(10)):
        answer = await client.post(
            f"/v1/stations/{station.id}/calls/{action}", json=payload, params={"timeout": 60}
        )
    assert answer.status_code == 409, answer.text
    assert answer.json()["code"] == "station_offline"


def manager_of(fleet: Fleet, message_ids: set[str]) -> dict[str, set[str]]:
    """Message id → the managers whose logs name it (the result handlers that saw it)."""
    seen: dict[str, set[str]] = {m: set() for m in message_ids}
    for process in fleet.manager_processes:
        for record in process.log_records():
            message_id = record.get("message_id")
            if message_id in seen:
                seen[message_id].add(process.role)
    return seen


async def test_every_csms_action_of_both_versions_through_the_api(
    fleet: tuple[Fleet, str], client: httpx.AsyncClient
) -> None:
    fleet_, _ = fleet
    # The schemas and the API's table agree: every classified action has schemas.
    for version in OcppVersion:
        assert set(csms_actions(version)) == CSMS_ACTIONS[version]
        assert {ERROR_ACTION, SILENT_ACTION} <= CSMS_ACTIONS[version]

    suffix = uuid.uuid4().hex[:6]
    ws201 = await websockets.connect(fleet_.url(f"EVERY2-{suffix}"), subprotocols=["ocpp2.0.1"])  # type: ignore[list-item]
    ws16 = await websockets.connect(fleet_.url(f"EVERY1-{suffix}"), subprotocols=["ocpp1.6"])  # type: ignore[list-item]
    stations: list[Station] = [
        Station201(f"EVERY2-{suffix}", ws201, response_timeout=scaled(10)),
        Station16(f"EVERY1-{suffix}", ws16, response_timeout=scaled(10)),
    ]
    tasks = [asyncio.create_task(station.start()) for station in stations]
    try:
        await asyncio.gather(*(station.boot() for station in stations))
        for station in stations:
            assert (await until_online(client, station.id))["ocpp_version"] == station.version.value

        sent = await asyncio.gather(*(every_action(client, station) for station in stations))
        await asyncio.gather(*(error_and_timeout(client, station) for station in stations))

        # Both managers read the gateway's copies of the outcomes on the shared subscription:
        # each outcome reached exactly one of them, and each of them got some.
        message_ids = {m for ids in sent for m in ids}
        deadline = asyncio.get_running_loop().time() + scaled(20)
        while True:
            seen = manager_of(fleet_, message_ids)
            if all(seen.values()) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        assert all(len(managers) == 1 for managers in seen.values()), {
            m: managers for m, managers in seen.items() if len(managers) != 1
        }
        by_manager = {
            p.role: {m for m, s in seen.items() if p.role in s} for p in fleet_.manager_processes
        }
        assert all(by_manager.values()), {role: len(ids) for role, ids in by_manager.items()}
        # Nothing about these stations went wrong anywhere: no error, no answer found invalid,
        # no failed call among the ones that were all answered.
        names = {station.id for station in stations}
        for process in fleet_.processes:
            troubles = [
                record
                for record in process.log_records()
                if record.get("station") in names
                and (
                    record.get("level") in ("error", "critical")
                    or record.get("event") == "station answered with an invalid CallResult"
                    or (
                        record.get("event") == "call failed"
                        and record.get("message_id") in message_ids
                    )
                )
            ]
            assert not troubles, (process.role, troubles)
    finally:
        for task in tasks:
            task.cancel()
        await ws201.close()
        await ws16.close()

    await asyncio.gather(*(offline_at_once(client, station) for station in stations))
