"""The ``csms`` commands that drive the operator API (station list/show, call, call-status,
tx) against ``csms run``'s composition on free ports, with a real WebSocket station: the
commands run in-process (``cli.main.main`` in a thread, the CSMS in the test's loop) and as
subprocesses (``python -m cli``)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from websockets.asyncio.client import ClientConnection, connect

import cli.api_client
from cli import processes
from cli.main import main
from cli.tx import CsvRows
from csms.config import Settings
from tests.timing import timeout as scaled

ADMIN = "cli-tests-admin-key-0123"
ROOT = Path(__file__).resolve().parents[2]

BOOT = {"chargingStation": {"model": "Wallbox", "vendorName": "ACME"}, "reason": "PowerUp"}


def _event(kind: str, seq: int, tx: str, at: str, wh: float, **extra: Any) -> dict[str, Any]:
    return {
        "eventType": kind,
        "timestamp": at,
        "triggerReason": "Authorized" if kind == "Started" else "MeterValuePeriodic",
        "seqNo": seq,
        "transactionInfo": {"transactionId": tx, **extra},
        "idToken": {"idToken": "RFID-0001", "type": "ISO14443"},
        "evse": {"id": 1, "connectorId": 1},
        "meterValue": [
            {
                "timestamp": at,
                "sampledValue": [{"value": wh, "measurand": "Energy.Active.Import.Register"}],
            }
        ],
    }


class Station:
    """A 2.0.1 station on a raw socket: answers CSMS calls Accepted, with a CallError for
    the actions in ``refuse``, not at all for those in ``ignore``, and for those in
    ``hold`` once :attr:`release` is set."""

    refuse = {"ClearCache"}
    ignore = {"UnlockConnector"}
    hold = {"ChangeAvailability"}

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[tuple[str, Any]] = []
        self.release = asyncio.Event()
        self._answers: dict[str, asyncio.Future[Any]] = {}
        self._reader = asyncio.create_task(self._read())

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        message_id = f"m{len(self._answers)}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._answers[message_id] = future
        await self.ws.send(json.dumps([2, message_id, action, payload]))
        return await asyncio.wait_for(future, scaled(5))

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            if frame[0] == 2:
                self.received.append((frame[2], frame[3]))
                if frame[2] in self.hold:
                    await self.release.wait()
                if frame[2] in self.refuse:
                    answer = [4, frame[1], "NotSupported", "not on this model", {}]
                    await self.ws.send(json.dumps(answer))
                elif frame[2] not in self.ignore:
                    await self.ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
            elif frame[1] in self._answers:
                self._answers[frame[1]].set_result(frame[2] if frame[0] == 3 else frame)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Csms:
    url: str
    station: Station
    run: Callable[..., Any]
    """``await csms.run("call", "CS001", ...)`` -> Result, with --api-url and the key."""


@pytest.fixture(autouse=True)
def _no_api_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSMS_API_URL", raising=False)
    monkeypatch.delenv("CSMS_API_KEY", raising=False)


@pytest.fixture(autouse=True)
def _quiet_csms() -> Iterator[None]:
    """The CSMS under test logs in this process: keep its lines out of the commands'
    captured output, and restore structlog's configuration afterwards."""
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def in_process(capsys: pytest.CaptureFixture[str]) -> Callable[..., Any]:
    async def run(*argv: str) -> Result:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@contextlib.asynccontextmanager
async def running_csms(
    capsys: pytest.CaptureFixture[str], call_timeout: float
) -> AsyncIterator[Csms]:
    """``csms run`` with station CS001 booted (one ended and one running transaction,
    connector 1 Occupied) and two never-connected stations, CS-OFF and depot/A1."""
    settings = Settings.model_validate(
        {
            "listen_port": 0,
            "api_port": 0,
            "ping_interval": None,
            "ping_timeout": None,
            "api_admin_key": ADMIN,
            "call_timeout": call_timeout,
            "unknown_tokens": "accept",
            "stations": [
                {"station_id": "CS-OFF", "registration": "Pending"},
                {"station_id": "depot/A1"},
            ],
        }
    )
    async with processes.embedded(settings) as running:
        assert running.api is not None
        ws = await connect(running.gateway.url_for("CS001"), subprotocols=["ocpp2.0.1"])  # type: ignore[list-item]
        cs = Station(ws)
        try:
            assert (await cs.call("BootNotification", BOOT))["status"] == "Accepted"
            for event in (
                _event("Started", 0, "TX-1", "2026-01-10T08:00:00Z", 1000),
                _event("Ended", 1, "TX-1", "2026-01-10T09:00:00Z", 8500, stoppedReason="Local"),
                _event("Started", 0, "TX-2", "2026-01-15T12:00:00Z", 9000),
            ):
                await cs.call("TransactionEvent", event)
            status = {
                "timestamp": "2026-01-15T12:00:00Z",
                "connectorStatus": "Occupied",
                "evseId": 1,
                "connectorId": 1,
            }
            await cs.call("StatusNotification", status)
            api_url = running.api.url
            run = in_process(capsys)

            async def with_api(*argv: str) -> Result:
                result: Result = await run(*argv, "--api-url", api_url, "--api-key", ADMIN)
                return result

            yield Csms(api_url, cs, with_api)
        finally:
            cs.release.set()
            await cs.close()


@pytest.fixture
async def csms(capsys: pytest.CaptureFixture[str]) -> AsyncIterator[Csms]:
    """The CSMS with a short call timeout: a station's silence is a timeout at once."""
    async with running_csms(capsys, call_timeout=0.5) as running:
        yield running


# --- stations ------------------------------------------------------------------------------


async def test_station_list_is_a_table_and_json_is_one_array(csms: Csms) -> None:
    listed = await csms.run("station", "list")
    assert listed.code == 0, listed.err
    header, *rows = listed.out.splitlines()
    assert header.split() == [
        "STATION", "ONLINE", "REGISTRATION", "VERSION", "MODEL", "PROFILE", "LAST", "SEEN"
    ]  # fmt: skip
    assert [row.split()[0] for row in rows] == ["CS-OFF", "CS001", "depot/A1"]
    cs001 = next(row for row in rows if row.startswith("CS001"))
    assert cs001.split()[1:5] == ["yes", "Accepted", "ocpp2.0.1", "ACME"]
    # Aligned: every column starts where its header does.
    assert {row.index(row.split()[2]) for row in rows} == {header.index("REGISTRATION")}

    as_json = await csms.run("station", "list", "--json")
    items = as_json.json()
    assert [item["station_id"] for item in items] == ["CS-OFF", "CS001", "depot/A1"]
    assert items[1]["boot"]["model"] == "Wallbox" and "password_hash" not in items[1]


async def test_station_list_filters_and_follows_every_page(
    csms: Csms, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli.api_client, "PAGE_SIZE", 1)  # one station per request
    everything = (await csms.run("station", "list", "--json")).json()
    assert [item["station_id"] for item in everything] == ["CS-OFF", "CS001", "depot/A1"]
    limited = (await csms.run("station", "list", "--json", "--limit", "2")).json()
    assert [item["station_id"] for item in limited] == ["CS-OFF", "CS001"]
    online = (await csms.run("station", "list", "--online", "--json")).json()
    assert [item["station_id"] for item in online] == ["CS001"]
    offline = (await csms.run("station", "list", "--offline", "--json")).json()
    assert [item["station_id"] for item in offline] == ["CS-OFF", "depot/A1"]
    pending = (await csms.run("station", "list", "--registration", "Pending", "--json")).json()
    assert [item["station_id"] for item in pending] == ["CS-OFF"]
    prefix = (await csms.run("station", "list", "--prefix", "dep", "--json")).json()
    assert [item["station_id"] for item in prefix] == ["depot/A1"]
    none = await csms.run("station", "list", "--prefix", "zz")
    assert none.code == 0 and none.out == "" and "no stations match" in none.err


async def test_station_show_has_boot_info_connectors_and_active_transactions(csms: Csms) -> None:
    shown = await csms.run("station", "show", "CS001")
    assert shown.code == 0, shown.err
    lines = shown.out.splitlines()
    facts = {line.split(":")[0]: line.split(":", 1)[1].strip() for line in lines if ":  " in line}
    assert facts["vendor"] == "ACME" and facts["model"] == "Wallbox"
    assert facts["online"] == "yes" and facts["boot reason"] == "PowerUp"
    connectors = lines[lines.index("connectors (1):") + 1 :]
    assert connectors[1].split()[:3] == ["1", "1", "Occupied"]
    active = lines[lines.index("active transactions (1):") + 1 :]
    assert active[1].split()[:3] == ["TX-2", "1", "RFID-0001"]

    detail = (await csms.run("station", "show", "CS001", "--json")).json()
    assert [tx["transaction_id"] for tx in detail["active_transactions"]] == ["TX-2"]
    assert detail["connectors"][0]["status"] == "Occupied"


async def test_station_ids_with_a_slash_and_unknown_stations(csms: Csms) -> None:
    slashed = await csms.run("station", "show", "depot/A1", "--json")
    assert slashed.code == 0, slashed.err
    assert slashed.json()["station_id"] == "depot/A1"
    unknown = await csms.run("station", "show", "NOPE-7")
    assert unknown.code == 2 and unknown.out == ""
    assert unknown.err.startswith("csms: ") and "'NOPE-7'" in unknown.err
    assert "404 station_not_found" in unknown.err and len(unknown.err.splitlines()) == 1


# --- calls ---------------------------------------------------------------------------------


async def test_call_reaches_the_station_and_prints_its_answer(csms: Csms) -> None:
    answered = await csms.run("call", "CS001", "Reset", '{"type": "Immediate"}')
    assert answered.code == 0, answered.err
    assert ("Reset", {"type": "Immediate"}) in csms.station.received
    first, *payload = answered.out.splitlines()
    assert first.startswith("CS001 answered Reset (ocpp2.0.1, message ")
    assert json.loads("\n".join(payload)) == {"status": "Accepted"}

    as_json = (await csms.run("call", "CS001", "Reset", '{"type": "OnIdle"}', "--json")).json()
    assert as_json["outcome"] == "result" and as_json["payload"] == {"status": "Accepted"}
    assert ("Reset", {"type": "OnIdle"}) in csms.station.received


async def test_call_payload_from_a_file_and_from_stdin(
    csms: Csms, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = tmp_path / "trigger.json"
    payload.write_text('{"requestedMessage": "Heartbeat"}')
    from_file = await csms.run("call", "CS001", "TriggerMessage", f"@{payload}")
    assert from_file.code == 0, from_file.err
    assert ("TriggerMessage", {"requestedMessage": "Heartbeat"}) in csms.station.received

    monkeypatch.setattr(sys, "stdin", io.StringIO('{"requestedMessage": "StatusNotification"}'))
    from_stdin = await csms.run("call", "CS001", "TriggerMessage", "-")
    assert from_stdin.code == 0, from_stdin.err
    assert ("TriggerMessage", {"requestedMessage": "StatusNotification"}) in csms.station.received

    missing = await csms.run("call", "CS001", "TriggerMessage", f"@{tmp_path}/none.json")
    assert missing.code == 2 and "cannot read the payload file" in missing.err
    not_json = await csms.run("call", "CS001", "Reset", "{type: Immediate}")
    assert not_json.code == 2 and "the payload is not JSON" in not_json.err
    not_object = await csms.run("call", "CS001", "Reset", '["Immediate"]')
    assert not_object.code == 2 and "must be a JSON object" in not_object.err


async def test_call_errors_timeouts_and_offline_stations_exit_3(csms: Csms) -> None:
    refused = await csms.run("call", "CS001", "ClearCache")
    assert refused.code == 3, refused.err
    assert refused.out.startswith("CS001 answered ClearCache with CallError NotSupported")
    assert "not on this model" in refused.out

    silent = await csms.run(
        "call", "CS001", "UnlockConnector", '{"evseId": 1, "connectorId": 1}', "--json"
    )
    assert silent.code == 3 and silent.json()["outcome"] == "timeout"
    silent_text = await csms.run(
        "call", "CS001", "UnlockConnector", '{"evseId": 1, "connectorId": 1}'
    )
    assert silent_text.code == 3 and "did not answer UnlockConnector" in silent_text.out

    offline = await csms.run("call", "CS-OFF", "Reset", '{"type": "Immediate"}')
    assert offline.code == 3 and offline.out == ""
    assert "'CS-OFF'" in offline.err and "409 station_offline" in offline.err
    offline_json = await csms.run("call", "CS-OFF", "Reset", '{"type": "Immediate"}', "--json")
    assert offline_json.code == 3 and offline_json.json()["code"] == "station_offline"


async def test_no_wait_prints_the_call_id_and_call_status_reads_its_outcome(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running_csms(capsys, call_timeout=30) as csms:
        availability = '{"operationalStatus": "Inoperative"}'
        sent = await csms.run("call", "CS001", "ChangeAvailability", availability, "--no-wait")
        assert sent.code == 0, sent.err
        (call_id,) = sent.out.split()
        assert f"csms call-status {call_id}" in sent.err

        pending = await csms.run("call-status", call_id)
        assert pending.code == 4, pending.err
        assert "ChangeAvailability to CS001 is still waiting" in pending.out
        assert (await csms.run("call-status", call_id, "--json")).json()["outcome"] == "pending"

        csms.station.release.set()
        answered = await csms.run("call-status", call_id, "--wait", str(scaled(10)))
        assert answered.code == 0, answered.err
        first, *payload = answered.out.splitlines()
        assert first == f"CS001 answered ChangeAvailability (ocpp2.0.1, message {call_id}):"
        assert json.loads("\n".join(payload)) == {"status": "Accepted"}
        assert ("ChangeAvailability", {"operationalStatus": "Inoperative"}) in csms.station.received

        as_json = await csms.run(
            "call", "CS001", "Reset", '{"type": "Immediate"}', "--no-wait", "--json"
        )
        assert as_json.code == 0 and as_json.json()["outcome"] == "pending"
        offline = await csms.run("call", "CS-OFF", "Reset", '{"type": "Immediate"}', "--no-wait")
        assert offline.code == 3 and "409 station_offline" in offline.err
        unknown = await csms.run("call-status", "no-such-call")
        assert unknown.code == 2 and "404 call_not_found" in unknown.err
        assert "'no-such-call'" in unknown.err


async def test_call_refusals_exit_2_with_the_api_message(csms: Csms) -> None:
    unknown = await csms.run("call", "NOPE-7", "Reset", '{"type": "Immediate"}')
    assert unknown.code == 2 and "no station 'NOPE-7'" in unknown.err
    invalid = await csms.run("call", "CS001", "Reset", '{"type": "Sometimes"}')
    assert invalid.code == 2 and "422 invalid_payload" in invalid.err and "type" in invalid.err
    action = await csms.run("call", "CS001", "Rest")
    assert action.code == 2 and "404 unknown_action" in action.err
    station_side = await csms.run("call", "CS001", "BootNotification", json.dumps(BOOT))
    assert station_side.code == 2 and "not_a_csms_action" in station_side.err
    wait = await csms.run("call", "CS001", "Reset", '{"type": "Immediate"}', "--timeout", "0")
    assert wait.code == 2 and "--timeout" in wait.err
    assert all(name != "Rest" for name, _ in csms.station.received)


async def test_bad_or_missing_keys_and_scopes(
    csms: Csms, capsys: pytest.CaptureFixture[str]
) -> None:
    run = in_process(capsys)
    bad = await run("station", "list", "--api-url", csms.url, "--api-key", "csms_00_nope")
    assert bad.code == 2 and bad.out == ""
    assert "401 unauthorized" in bad.err and "check the API key" in bad.err
    missing = await run("station", "list", "--api-url", csms.url)
    assert missing.code == 2 and "set --api-key or CSMS_API_KEY" in missing.err

    # A read key lists but may not call.
    async with httpx.AsyncClient(base_url=csms.url) as client:
        answer = await client.post(
            "/v1/api-keys",
            json={"name": "viewer", "scope": "read"},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        reader = answer.json()["key"]
    listed = await run("station", "list", "--api-url", csms.url, "--api-key", reader)
    assert listed.code == 0
    call = await run(
        "call",
        "CS001",
        "Reset",
        '{"type": "Immediate"}',
        "--api-url",
        csms.url,
        "--api-key",
        reader,
    )
    assert call.code == 2 and "403" in call.err


async def test_the_environment_names_the_api_and_the_key(
    csms: Csms, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CSMS_API_URL", f"{csms.url}/v1/")  # with the version: accepted
    monkeypatch.setenv("CSMS_API_KEY", ADMIN)
    listed = await in_process(capsys)("station", "list", "--online", "--json")
    assert listed.code == 0, listed.err
    assert [item["station_id"] for item in listed.json()] == ["CS001"]


async def test_an_api_that_is_down_is_a_connection_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    down = await in_process(capsys)("call", "CS001", "Reset", "--api-url", url, "--api-key", ADMIN)
    assert down.code == 1 and down.out == ""
    assert down.err.startswith(f"csms: cannot reach the operator API at {url}")
    assert "CSMS_API_URL" in down.err and len(down.err.splitlines()) == 1
    wrong = await in_process(capsys)("tx", "list", "--api-url", "ftp://example.org")
    assert wrong.code == 2 and "not an http:// or https:// URL" in wrong.err


# --- transactions --------------------------------------------------------------------------


async def test_tx_list_filters_and_table(csms: Csms) -> None:
    listed = await csms.run("tx", "list")
    assert listed.code == 0, listed.err
    header, *rows = listed.out.splitlines()
    assert header.split()[:3] == ["STATION", "TRANSACTION", "STATE"]
    assert [row.split()[1] for row in rows] == ["TX-2", "TX-1"]  # newest first
    ended = next(row.split() for row in rows if row.split()[1] == "TX-1")
    assert ended[2] == "Ended" and ended[4] == "RFID-0001" and ended[7] == "7.500"

    def ids(result: Result) -> list[str]:
        assert result.code == 0, result.err
        return [tx["transaction_id"] for tx in result.json()]

    assert ids(await csms.run("tx", "list", "--active", "--json")) == ["TX-2"]
    assert ids(await csms.run("tx", "list", "--ended", "--json")) == ["TX-1"]
    assert ids(
        await csms.run("tx", "list", "--station", "CS001", "--token", "RFID-0001", "--json")
    ) == ["TX-2", "TX-1"]
    assert ids(await csms.run("tx", "list", "--token", "OTHER", "--json")) == []
    assert ids(await csms.run("tx", "list", "--since", "2026-01-12T00:00:00Z", "--json")) == [
        "TX-2"
    ]
    assert ids(await csms.run("tx", "list", "--until", "2026-01-12T00:00:00Z", "--json")) == [
        "TX-1"
    ]
    assert ids(await csms.run("tx", "list", "--limit", "1", "--json")) == ["TX-2"]
    bad = await csms.run("tx", "list", "--since", "last tuesday")
    assert bad.code == 2 and "started_after" in bad.err and "400 invalid_parameter" in bad.err


async def test_tx_show_has_the_readings(csms: Csms) -> None:
    shown = await csms.run("tx", "show", "CS001", "TX-1")
    assert shown.code == 0, shown.err
    lines = shown.out.splitlines()
    facts = {line.split(":")[0]: line.split(":", 1)[1].strip() for line in lines if ":  " in line}
    assert facts["state"] == "Ended" and facts["energy kWh"] == "7.500"
    assert facts["stop reason"] == "Local"
    readings = lines[lines.index("readings (2):") + 1 :]
    assert [row.split()[:2] for row in readings[1:]] == [
        ["2026-01-10T08:00:00Z", "1000"],
        ["2026-01-10T09:00:00Z", "8500"],
    ]
    detail = (await csms.run("tx", "show", "CS001", "TX-1", "--json")).json()
    assert detail["energy_wh"] == 7500 and len(detail["readings"]) == 2
    unknown = await csms.run("tx", "show", "CS001", "TX-9")
    assert unknown.code == 2 and "'TX-9'" in unknown.err


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


async def test_tx_export_streams_the_csv_to_a_file_or_stdout(csms: Csms, tmp_path: Path) -> None:
    target = tmp_path / "billing.csv"
    exported = await csms.run("tx", "export", "-o", str(target))
    assert exported.code == 0, exported.err
    assert exported.out == ""
    assert exported.err.splitlines()[-1] == f"exported 2 transactions to {target}"
    rows = list(csv.reader(io.StringIO(target.read_text(), newline="")))
    assert rows[0][:2] == ["station_id", "transaction_id"]
    assert [row[1] for row in rows[1:]] == ["TX-2", "TX-1"]
    assert files_in(tmp_path) == ["billing.csv"]  # no partial left

    active = await csms.run("tx", "export", "--active", "--station", "CS001")
    assert active.code == 0, active.err
    rows = list(csv.reader(io.StringIO(active.out, newline="")))
    assert [row[1] for row in rows[1:]] == ["TX-2"]
    assert active.err.splitlines()[-1] == "exported 1 transaction"

    refused = await csms.run("tx", "export", "--since", "soon", "-o", str(tmp_path / "x.csv"))
    assert refused.code == 2 and "started_after" in refused.err
    assert files_in(tmp_path) == ["billing.csv"]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_export_rows_are_counted_across_chunks_and_quoted_line_ends(size: int) -> None:
    text = b'a,b\r\n"x\r\ny",1\r\n"say ""hi""\n",2\r\nlast,3'
    counter = CsvRows()
    for start in range(0, len(text), size):
        counter.feed(text[start : start + size])
    assert counter.done() == 3
    header_only = CsvRows()
    header_only.feed(b"a,b\r\n")
    assert header_only.done() == 0


# --- as real processes ---------------------------------------------------------------------


async def _subprocess(*argv: str, env: dict[str, str], stdin: bytes = b"") -> Result:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        *argv,
        cwd=ROOT,
        env={**os.environ, **env},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), scaled(30))
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def test_csms_call_as_a_process_with_the_payload_on_stdin(csms: Csms) -> None:
    env = {"CSMS_API_URL": csms.url, "CSMS_API_KEY": ADMIN}
    answered = await _subprocess(
        "call", "CS001", "Reset", "-", "--json", env=env, stdin=b'{"type": "Immediate"}'
    )
    assert answered.code == 0, answered.err
    assert answered.json()["payload"] == {"status": "Accepted"}
    assert ("Reset", {"type": "Immediate"}) in csms.station.received
    refused = await _subprocess("station", "show", "NOPE-7", env=env)
    assert refused.code == 2 and "'NOPE-7'" in refused.err and "Traceback" not in refused.err
