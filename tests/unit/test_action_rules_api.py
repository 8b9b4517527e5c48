"""Action rules end to end on ``csms run``'s composition (gateway + manager + API in one
process, in-memory stores): real WebSocket stations of both versions, the rules set over
HTTP, station Calls refused with SecurityError by the manager, CSMS calls refused with 403
by the API before anything is sent, and ``csms station rules`` / ``csms rules defaults``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import structlog
from websockets.asyncio.client import ClientConnection, connect

from cli import processes
from cli.main import main
from csms.config import Settings
from services.models import RegistrationStatus, StationCredentials
from tests.timing import timeout as scaled

ADMIN = "action-rules-admin-key-for-tests"
V16, V201 = "ocpp1.6", "ocpp2.0.1"
BOOT = {
    V201: {"chargingStation": {"model": "Wallbox", "vendorName": "ACME"}, "reason": "PowerUp"},
    V16: {"chargePointVendor": "ACME", "chargePointModel": "Wallbox"},
}
RESET = {V201: {"type": "Immediate"}, V16: {"type": "Hard"}}
STATUS = {
    V201: {
        "timestamp": "2026-01-15T12:00:00Z",
        "connectorStatus": "Occupied",
        "evseId": 1,
        "connectorId": 1,
    },
    V16: {"connectorId": 1, "errorCode": "NoError", "status": "Charging"},
}
DATA = {"vendorId": "ACME", "messageId": "x"}


class Station:
    """A station on a raw socket: sends Calls, answers every CSMS call Accepted and keeps
    what it was sent."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[tuple[str, Any]] = []
        self._answers: dict[str, asyncio.Future[list[Any]]] = {}
        self._count = 0
        self._reader = asyncio.create_task(self._read())

    async def call(self, action: str, payload: Any, message_id: str | None = None) -> list[Any]:
        """The whole answer frame: ``[3, id, payload]`` or ``[4, id, code, text, details]``."""
        self._count += 1
        message_id = message_id or f"m{self._count}"
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._answers[message_id] = future
        await self.ws.send(json.dumps([2, message_id, action, payload]))
        return await asyncio.wait_for(future, scaled(5))

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            if frame[0] == 2:
                self.received.append((frame[2], frame[3]))
                await self.ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
            elif frame[1] in self._answers:
                self._answers.pop(frame[1]).set_result(frame)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


@dataclass
class Csms:
    running: processes.Embedded
    http: httpx.AsyncClient
    stations: list[Station]

    async def station(self, station_id: str, version: str) -> Station:
        """A booted, online station."""
        url = self.running.gateway.url_for(station_id)
        cs = Station(await connect(url, subprotocols=[version]))  # type: ignore[list-item]
        self.stations.append(cs)
        answer = await cs.call("BootNotification", BOOT[version])
        assert answer[0] == 3 and answer[2]["status"] == "Accepted", answer
        for _ in range(500):
            record = await self.running.services.stations.get(station_id)
            if (
                record is not None
                and record.online
                and station_id in self.running.gateway.connections
            ):
                return cs
            await asyncio.sleep(0.01)
        raise AssertionError(f"{station_id} never came online")

    async def put_rules(self, station_id: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await self.http.put(f"/v1/stations/{station_id}/rules", json=body)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result


@pytest.fixture
async def csms() -> AsyncIterator[Csms]:
    settings = Settings.model_validate(
        {
            "listen_port": 0,
            "api_port": 0,
            "ping_interval": None,
            "ping_timeout": None,
            "api_admin_key": ADMIN,
            "call_timeout": 2,
        }
    )
    async with processes.embedded(settings) as running:
        assert running.api is not None
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=running.api.url, headers=headers, timeout=10) as http:
            harness = Csms(running, http, [])
            try:
                yield harness
            finally:
                for cs in harness.stations:
                    await cs.close()


def security_error(answer: list[Any]) -> tuple[str, str, dict[str, Any]]:
    assert answer[0] == 4, answer
    return answer[2], answer[3], answer[4]


def error_of(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    assert set(body) == {"code", "message", "details"} and body["code"] == code, body
    return body


# --- station Calls ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [V201, V16])
async def test_a_denied_station_call_is_security_error_before_its_handler_runs(
    csms: Csms, version: str
) -> None:
    cs = await csms.station("CS1", version)
    await csms.put_rules("CS1", {"station_calls": {"deny": ["DataTransfer", "StatusNotification"]}})
    code, description, details = security_error(await cs.call("DataTransfer", DATA))
    assert code == "SecurityError"
    assert description == "action DataTransfer is denied for this station"
    assert details == {"rule": "deny", "source": "station"}
    # Refused before the handler: the status is not stored.
    code, description, _ = security_error(await cs.call("StatusNotification", STATUS[version]))
    assert (code, description) == (
        "SecurityError",
        "action StatusNotification is denied for this station",
    )
    detail = (await csms.http.get("/v1/stations/CS1")).json()
    assert detail["connectors"] == []
    # Allowed Calls are answered as ever; BootNotification always is.
    assert (await cs.call("Heartbeat", {}))[0] == 3
    assert (await cs.call("BootNotification", BOOT[version]))[0] == 3
    # A denied action is SecurityError even when its payload is invalid.
    code, _, _ = security_error(await cs.call("DataTransfer", {"vendorId": 7}))
    assert code == "SecurityError"


@pytest.mark.parametrize("version", [V201, V16])
async def test_an_allow_list_refuses_every_other_action(csms: Csms, version: str) -> None:
    cs = await csms.station("CS1", version)
    await csms.put_rules(
        "CS1", {"station_calls": {"allow": ["BootNotification", "Heartbeat", "DataTransfer"]}}
    )
    assert (await cs.call("DataTransfer", DATA))[0] == 3
    code, description, details = security_error(
        await cs.call("StatusNotification", STATUS[version])
    )
    assert code == "SecurityError"
    assert description == "action StatusNotification is not in the allow list for this station"
    assert details == {"rule": "allow", "source": "station"}


async def test_a_version_default_applies_and_a_station_rule_overrides_it(csms: Csms) -> None:
    plain = await csms.station("CS-PLAIN", V201)
    own = await csms.station("CS-OWN", V201)
    old = await csms.station("CS-16", V16)
    answer = await csms.http.put(
        "/v1/rules/defaults/ocpp2.0.1", json={"station_calls": {"deny": ["DataTransfer"]}}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["rules"]["station_calls"] == {"allow": None, "deny": ["DataTransfer"]}
    await csms.put_rules("CS-OWN", {"station_calls": {"deny": ["Heartbeat"]}})

    _, description, details = security_error(await plain.call("DataTransfer", DATA))
    assert description == "action DataTransfer is denied for this station"
    assert details == {"rule": "deny", "source": "default"}
    assert (await own.call("DataTransfer", DATA))[0] == 3  # its own rule replaces the default
    assert security_error(await own.call("Heartbeat", {}))[2]["source"] == "station"
    assert (await old.call("DataTransfer", DATA))[0] == 3  # a 1.6 station: not its version

    view = (await csms.http.get("/v1/stations/CS-PLAIN/rules")).json()
    assert view["rules"] == {"station_calls": None, "csms_calls": None}
    assert view["effective"]["station_calls"] == {
        "allow": None,
        "deny": ["DataTransfer"],
        "source": "default",
    }
    await csms.http.put("/v1/rules/defaults/ocpp2.0.1", json={})
    assert (await plain.call("DataTransfer", DATA))[0] == 3


async def test_a_repeated_denied_call_gets_the_same_answer_after_the_rule_is_lifted(
    csms: Csms,
) -> None:
    """The SecurityError is stored for idempotency like any handled Call's answer."""
    cs = await csms.station("CS1", V201)
    await csms.put_rules("CS1", {"station_calls": {"deny": ["DataTransfer"]}})
    first = await cs.call("DataTransfer", DATA, message_id="repeat-1")
    assert security_error(first)[0] == "SecurityError"
    assert (await csms.http.delete("/v1/stations/CS1/rules")).status_code == 204
    assert await cs.call("DataTransfer", DATA, message_id="repeat-1") == first
    assert (await cs.call("DataTransfer", DATA, message_id="fresh-1"))[0] == 3


# --- CSMS calls ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [V201, V16])
async def test_a_denied_csms_call_is_403_and_the_station_receives_nothing(
    csms: Csms, version: str
) -> None:
    cs = await csms.station("CS1", version)
    await csms.put_rules("CS1", {"csms_calls": {"deny": ["Reset"]}})
    answer = await csms.http.post("/v1/stations/CS1/calls/Reset", json=RESET[version])
    body = error_of(answer, 403, "action_denied")
    assert body["message"] == "action Reset is denied for this station"
    assert body["details"] == {
        "station_id": "CS1",
        "action": "Reset",
        "direction": "csms_calls",
        "rule": "deny",
        "source": "station",
    }
    not_waited = await csms.http.post(
        "/v1/stations/CS1/calls/Reset?wait=false", json=RESET[version]
    )
    error_of(not_waited, 403, "action_denied")
    error_of(await csms.http.post("/v1/stations/CS1/reset", json={}), 403, "action_denied")
    trigger = {"requestedMessage": "Heartbeat"}
    allowed = await csms.http.post("/v1/stations/CS1/calls/TriggerMessage", json=trigger)
    assert allowed.status_code == 200 and allowed.json()["outcome"] == "result", allowed.text
    assert cs.received == [("TriggerMessage", trigger)]
    # A refused call was never sent, so it is not among the station's calls.
    calls = (await csms.http.get("/v1/stations/CS1/calls")).json()["items"]
    assert [call["action"] for call in calls] == ["TriggerMessage"]


async def test_a_csms_allow_list_covers_every_route_that_sends_calls(csms: Csms) -> None:
    cs = await csms.station("CS1", V201)
    await csms.put_rules("CS1", {"csms_calls": {"allow": ["Reset", "TriggerMessage"]}})
    for path, body in [
        ("/v1/stations/CS1/remote-start", {"id_token": "T1", "wait": 0}),
        ("/v1/stations/CS1/unlock", {"evse_id": 1, "connector_id": 1}),
        ("/v1/stations/CS1/availability", {"operative": False}),
        ("/v1/stations/CS1/calls/GetBaseReport", {"requestId": 1, "reportBase": "FullInventory"}),
    ]:
        denied = error_of(await csms.http.post(path, json=body), 403, "action_denied")
        assert denied["details"]["rule"] == "allow", path
    assert (await csms.http.post("/v1/stations/CS1/reset", json={})).status_code == 200
    trigger = await csms.http.post("/v1/stations/CS1/trigger", json={"message": "Heartbeat"})
    assert trigger.status_code == 200, trigger.text
    assert [action for action, _ in cs.received] == ["Reset", "TriggerMessage"]


async def test_a_default_csms_rule_applies_to_stations_without_their_own(csms: Csms) -> None:
    cs = await csms.station("CS1", V16)
    answer = await csms.http.put(
        "/v1/rules/defaults/ocpp1.6", json={"csms_calls": {"deny": ["Reset"]}}
    )
    assert answer.status_code == 200, answer.text
    body = error_of(await csms.http.post("/v1/stations/CS1/reset", json={}), 403, "action_denied")
    assert body["details"]["source"] == "default"
    await csms.put_rules("CS1", {"csms_calls": {"deny": []}})
    assert (await csms.http.post("/v1/stations/CS1/reset", json={})).status_code == 200
    assert [action for action, _ in cs.received] == ["Reset"]


# --- the API ---------------------------------------------------------------------------------


async def test_get_shows_own_and_effective_rules_and_delete_goes_back_to_the_default(
    csms: Csms,
) -> None:
    await csms.station("CS/1", V201)
    await csms.http.put("/v1/rules/defaults/ocpp2.0.1", json={"csms_calls": {"deny": ["Reset"]}})
    put = await csms.put_rules(
        "CS%2F1",
        {
            "station_calls": {"allow": ["Heartbeat", "BootNotification"], "deny": ["Heartbeat"]},
        },
    )
    assert put == {
        "station_id": "CS/1",
        "version": V201,
        "rules": {
            "station_calls": {"allow": ["BootNotification", "Heartbeat"], "deny": ["Heartbeat"]},
            "csms_calls": None,
        },
        "effective": {
            "station_calls": {
                "allow": ["BootNotification", "Heartbeat"],
                "deny": ["Heartbeat"],
                "source": "station",
            },
            "csms_calls": {"allow": None, "deny": ["Reset"], "source": "default"},
        },
    }
    assert (await csms.http.get("/v1/stations/CS%2F1/rules")).json() == put
    assert (await csms.http.delete("/v1/stations/CS%2F1/rules")).status_code == 204
    after = (await csms.http.get("/v1/stations/CS%2F1/rules")).json()
    assert after["rules"] == {"station_calls": None, "csms_calls": None}
    assert after["effective"]["station_calls"] == {"allow": None, "deny": [], "source": "none"}
    defaults = (await csms.http.get("/v1/rules/defaults/ocpp2.0.1")).json()
    assert defaults == {
        "version": V201,
        "rules": {"station_calls": None, "csms_calls": {"allow": None, "deny": ["Reset"]}},
    }


async def test_a_station_that_never_connected_has_only_its_own_rules(csms: Csms) -> None:
    await csms.running.services.stations.provision("NEW", RegistrationStatus.ACCEPTED)
    view = await csms.put_rules("NEW", {"csms_calls": {"deny": ["RequestStartTransaction"]}})
    assert view["version"] is None
    assert view["effective"]["csms_calls"]["source"] == "station"


@pytest.mark.parametrize(
    ("path", "body", "code", "field", "action"),
    [
        (
            "/v1/stations/CS1/rules",
            {"station_calls": {"deny": ["DataTrnasfer"]}},
            "unknown_action",
            "station_calls.deny",
            "DataTrnasfer",
        ),
        (
            "/v1/stations/CS1/rules",
            {"csms_calls": {"allow": ["Reset", "RemoteStartTransaction"]}},  # 1.6 only
            "unknown_action",
            "csms_calls.allow",
            "RemoteStartTransaction",
        ),
        (
            "/v1/stations/CS1/rules",
            {"station_calls": {"deny": ["BootNotification"]}},
            "boot_notification_denied",
            "station_calls.deny",
            "BootNotification",
        ),
        (
            "/v1/stations/CS1/rules",
            {"station_calls": {"allow": ["Heartbeat"]}},
            "boot_notification_denied",
            "station_calls.allow",
            "BootNotification",
        ),
        (
            "/v1/rules/defaults/ocpp1.6",
            {"csms_calls": {"deny": ["RequestStartTransaction"]}},
            "unknown_action",
            "csms_calls.deny",
            "RequestStartTransaction",
        ),
    ],
)
async def test_invalid_rules_are_422_naming_the_list_and_the_action(
    csms: Csms, path: str, body: dict[str, Any], code: str, field: str, action: str
) -> None:
    await csms.running.services.stations.provision("CS1", RegistrationStatus.ACCEPTED)
    await csms.running.services.stations.set_credentials(
        "CS1", StationCredentials(allowed_versions=(V201,))
    )
    answer = await csms.http.put(path, json=body)
    error = error_of(answer, 422, code)
    assert error["details"] == {"field": field, "in": "body", "action": action}
    assert action in error["message"] or "BootNotification" in error["message"]
    if code == "boot_notification_denied":
        assert "never register again" in error["message"]
    assert (await csms.http.get(path)).json()["rules"] == {
        "station_calls": None,
        "csms_calls": None,
    }


async def test_malformed_rules_unknown_stations_and_versions(csms: Csms) -> None:
    await csms.station("CS1", V201)
    typo = await csms.http.put("/v1/stations/CS1/rules", json={"station_calls": {"denied": []}})
    assert error_of(typo, 422, "invalid_request")["details"]["field"] == "station_calls.denied"
    junk = await csms.http.put("/v1/stations/CS1/rules", json={"csms_calls": {"deny": ["a b"]}})
    assert error_of(junk, 422, "invalid_request")["details"]["field"] == "csms_calls.deny.0"
    for method in ("GET", "PUT", "DELETE"):
        answer = await csms.http.request(method, "/v1/stations/NOPE/rules", json={})
        error_of(answer, 404, "station_not_found")
    version = await csms.http.get("/v1/rules/defaults/ocpp1.5")
    assert error_of(version, 422, "invalid_request")["details"]["field"] == "version"


async def test_reading_needs_read_scope_and_changing_needs_admin(csms: Csms) -> None:
    await csms.station("CS1", V201)
    keys = {}
    for scope in ("read", "operate"):
        made = await csms.http.post("/v1/api-keys", json={"name": scope, "scope": scope})
        keys[scope] = {"Authorization": f"Bearer {made.json()['key']}"}
    read = keys["read"]
    assert (await csms.http.get("/v1/stations/CS1/rules", headers=read)).status_code == 200
    assert (await csms.http.get("/v1/rules/defaults/ocpp1.6", headers=read)).status_code == 200
    for headers in keys.values():
        for method, path in [
            ("PUT", "/v1/stations/CS1/rules"),
            ("DELETE", "/v1/stations/CS1/rules"),
            ("PUT", "/v1/rules/defaults/ocpp1.6"),
        ]:
            answer = await csms.http.request(method, path, json={}, headers=headers)
            error_of(answer, 403, "forbidden")


# --- the command line ------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def quiet_logs() -> Any:
    """The CLI configures logging for its process; give it back afterwards."""
    saved = structlog.get_config()
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)


def cli(csms: Csms, capsys: pytest.CaptureFixture[str]) -> Callable[..., Any]:
    assert csms.running.api is not None
    url = csms.running.api.url

    async def run(*argv: str) -> Result:
        capsys.readouterr()
        code = await asyncio.to_thread(main, [*argv, "--api-url", url, "--api-key", ADMIN])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


async def test_csms_station_rules_shows_and_changes_a_stations_rules(
    csms: Csms, capsys: pytest.CaptureFixture[str], quiet_logs: Any
) -> None:
    cs = await csms.station("CS1", V201)
    run = cli(csms, capsys)
    shown = await run("station", "rules", "CS1")
    assert shown.code == 0, shown.err
    assert shown.out.splitlines()[0] == "station CS1 (ocpp2.0.1)"
    assert shown.out.splitlines()[2].split() == ["station_calls", "-", "everything", "none"]

    changed = await run(
        "station", "rules", "CS1", "--deny-station-call", "DataTransfer",
        "--allow-csms-call", "Reset,TriggerMessage", "--json",
    )  # fmt: skip
    assert changed.code == 0, changed.err
    view = json.loads(changed.out)
    assert view["rules"] == {
        "station_calls": {"allow": None, "deny": ["DataTransfer"]},
        "csms_calls": {"allow": ["Reset", "TriggerMessage"], "deny": []},
    }
    assert security_error(await cs.call("DataTransfer", DATA))[0] == "SecurityError"

    # One list changes, the others stay.
    more = await run("station", "rules", "CS1", "--deny-csms-call", "Reset")
    assert more.code == 0, more.err
    rows = {line.split()[0]: line for line in more.out.splitlines()[2:]}
    assert "deny DataTransfer" in rows["station_calls"]
    assert "only Reset,TriggerMessage; deny Reset" in rows["csms_calls"]

    unknown = await run("station", "rules", "CS1", "--deny-station-call", "Nope")
    assert unknown.code == 2 and "'Nope'" in unknown.err and "unknown_action" in unknown.err
    booting = await run("station", "rules", "CS1", "--deny-station-call", "BootNotification")
    assert booting.code == 2 and "boot_notification_denied" in booting.err

    cleared = await run("station", "rules", "CS1", "--clear", "--json")
    assert cleared.code == 0, cleared.err
    assert json.loads(cleared.out)["rules"] == {"station_calls": None, "csms_calls": None}
    assert (await cs.call("DataTransfer", DATA))[0] == 3


async def test_csms_rules_defaults_shows_and_changes_a_versions_defaults(
    csms: Csms, capsys: pytest.CaptureFixture[str], quiet_logs: Any
) -> None:
    cs = await csms.station("CS1", V16)
    run = cli(csms, capsys)
    changed = await run("rules", "defaults", "ocpp1.6", "--deny-station-call", "DataTransfer")
    assert changed.code == 0, changed.err
    assert changed.out.splitlines()[0] == "defaults of ocpp1.6"
    assert changed.out.splitlines()[2].split() == ["station_calls", "deny", "DataTransfer"]
    assert security_error(await cs.call("DataTransfer", DATA))[2]["source"] == "default"
    as_json = await run("rules", "defaults", "ocpp1.6", "--json")
    assert json.loads(as_json.out)["rules"]["station_calls"]["deny"] == ["DataTransfer"]
    cleared = await run("rules", "defaults", "ocpp1.6", "--clear")
    assert cleared.code == 0 and cleared.out.splitlines()[2].split() == ["station_calls", "-"]
    assert (await cs.call("DataTransfer", DATA))[0] == 3
