"""GET /v1/events against csms run's composition on free ports (uvicorn, the in-process
bus, memory stores) with a real WebSocket station and a real HTTP client: the live SSE
stream in order, resuming with Last-Event-ID without losing or repeating an event,
filters, truncation, keep-alives, the JSON page, auth, and streams that end on a client
disconnect and on server shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import structlog

import api.events
from cli import processes
from cli.main import main
from cli.processes import Embedded
from csms.config import Settings
from services.events import Event, EventLog, EventPage
from tests.timing import timeout as scaled
from tests.unit.test_events_publication import T0, Station, _transaction_event, station

ADMIN = "events-tests-admin-key-0123"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
BOOT = {"chargingStation": {"model": "Wallbox", "vendorName": "ACME"}, "reason": "PowerUp"}


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)


@dataclass
class Message:
    event: str = "message"
    id: str | None = None
    data: Any = None


@dataclass
class Stream:
    """An open SSE response, read message by message; comments are counted."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)
    _lines: AsyncIterator[str] | None = None

    async def next(self) -> Message:
        if self._lines is None:
            self._lines = self.response.aiter_lines()
        message = Message()
        seen = False
        async with asyncio.timeout(scaled(5)):
            async for line in self._lines:
                if line == "":
                    if seen:
                        return message
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                seen = True
                if name == "id":
                    message.id = value
                elif name == "event":
                    message.event = value
                elif name == "data":
                    message.data = json.loads(value)
        raise EOFError("the stream ended")

    async def take(self, count: int) -> list[Message]:
        return [await self.next() for _ in range(count)]

    async def until_comment(self, text: str) -> None:
        """Read until the comment ``text`` arrives (no events expected meanwhile)."""
        if self._lines is None:
            self._lines = self.response.aiter_lines()
        async with asyncio.timeout(scaled(5)):
            async for line in self._lines:
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    if line[1:].strip() == text:
                        return
                elif line:
                    raise AssertionError(f"unexpected {line!r}")
        raise EOFError("the stream ended")


@contextlib.asynccontextmanager
async def sse(
    client: httpx.AsyncClient, headers: dict[str, str] | None = None, **params: Any
) -> AsyncIterator[Stream]:
    request = client.build_request(
        "GET", "/v1/events", params=params, headers={**AUTH, **(headers or {})}
    )
    response = await client.send(request, stream=True)
    try:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Stream(response)
        await stream.until_comment("connected")
        yield stream
    finally:
        await response.aclose()


class CountingLog:
    """The process's event log, counting the long polls in progress."""

    def __init__(self, inner: EventLog) -> None:
        self.inner = inner
        self.waiting = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def wait(self, after: str | None, timeout: float, **filters: Any) -> EventPage:  # noqa: ASYNC109
        self.waiting += 1
        try:
            return await self.inner.wait(after, timeout, **filters)
        finally:
            self.waiting -= 1


@contextlib.asynccontextmanager
async def csms(**extra: Any) -> AsyncIterator[tuple[Embedded, httpx.AsyncClient]]:
    settings = Settings.model_validate(
        {
            "listen_port": 0,
            "api_port": 0,
            "ping_interval": None,
            "ping_timeout": None,
            "api_admin_key": ADMIN,
            "unknown_tokens": "accept",
            **extra,
        }
    )
    async with processes.embedded(settings) as running:
        assert running.api is not None
        async with httpx.AsyncClient(base_url=running.api.url, timeout=scaled(10)) as client:
            yield running, client


async def _session_start(cs: Station) -> None:
    await cs.call("BootNotification", BOOT)
    status = {"timestamp": T0, "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1}
    await cs.call("StatusNotification", status)
    await cs.call("TransactionEvent", _transaction_event("Started", 0, 0, 1000))


async def test_a_client_follows_disconnects_and_resumes_without_losing_or_repeating() -> None:
    async with csms() as (running, client):
        log = running.services.events
        async with sse(client) as stream, station(running, "CS-1", "ocpp2.0.1") as cs:
            await _session_start(cs)
            first = await stream.take(4)
            # The client goes away; the session goes on.
            await stream.response.aclose()
            await cs.call("TransactionEvent", _transaction_event("Updated", 1, 90, 1500))
            ended = _transaction_event("Ended", 2, 120, 2000, stoppedReason="Local")
            await cs.call("TransactionEvent", ended)
        await _until_logged(log, "station.disconnected")
        await _until_logged(log, "call.outcome")  # the CostUpdated the update sent
        logged = (await log.read(limit=1000)).events
        resume = {"Last-Event-ID": str(first[-1].id)}
        async with sse(client, headers=resume) as again:
            rest = await again.take(len(logged) - len(first))

    assert [m.event for m in first] == [
        "station.connected",
        "station.booted",
        "connector.status",
        "transaction.started",
    ]
    assert [m.event for m in rest if m.event != "call.outcome"] == [
        "transaction.updated",
        "transaction.ended",
        "station.disconnected",
    ]
    received = [m.id for m in first + rest]
    assert received == [event.id for event in logged]  # every event, once, in log order
    assert first[0].data["station_id"] == "CS-1" and first[0].data["v"] == 1
    assert first[0].data["id"] == first[0].id
    assert first[3].data["data"]["transaction_id"] == "TX-1"
    ended_data = next(m.data for m in rest if m.event == "transaction.ended")["data"]
    assert ended_data["energy_wh"] == 1000 and ended_data["stop_reason"] == "Local"


async def _until_logged(log: EventLog, kind: str) -> Event:
    after: str | None = None
    async with asyncio.timeout(scaled(5)):
        while True:
            page = await log.wait(after, 1.0, kinds=frozenset({kind}))
            if page.events:
                return page.events[0]
            after = page.last_id


async def test_filters_by_kind_and_station_and_resume_with_after() -> None:
    async with csms() as (running, client):
        kinds = "transaction.started,connector.status"
        async with (
            sse(client, kinds=kinds, station_id="CS-B") as stream,
            station(running, "CS-A", "ocpp2.0.1") as a,
            station(running, "CS-B", "ocpp2.0.1") as b,
        ):
            await _session_start(a)
            await _session_start(b)
            got = await stream.take(2)
        everything = await client.get("/v1/events", params={"follow": "false"}, headers=AUTH)
        all_kinds = await client.get(
            "/v1/events", params={"follow": "false", "kinds": "*", "limit": 3}, headers=AUTH
        )
        after_first = await client.get(
            "/v1/events",
            params={"follow": "false", "after": got[0].id, "station_id": "CS-B"},
            headers=AUTH,
        )

    assert [(m.event, m.data["station_id"]) for m in got] == [
        ("connector.status", "CS-B"),
        ("transaction.started", "CS-B"),
    ]
    page = everything.json()
    assert everything.status_code == 200 and page["truncated"] is False
    assert {item["station_id"] for item in page["items"]} == {"CS-A", "CS-B"}
    assert page["last_id"] == page["items"][-1]["id"]
    assert len(all_kinds.json()["items"]) == 3
    assert all_kinds.json()["last_id"] == page["items"][2]["id"]
    later = [item["kind"] for item in after_first.json()["items"]]
    assert later[0] == "transaction.started" and "station.booted" not in later


async def test_a_cursor_older_than_the_log_is_told_truncated_first() -> None:
    async with csms(event_retention=3) as (running, client):
        log = running.services.events
        async with station(running, "CS-T", "ocpp2.0.1") as cs:
            await _until_logged(log, "station.connected")
            oldest = (await log.read()).events[0]
            await _session_start(cs)
        async with sse(client, after=oldest.id) as stream:
            truncated = await stream.next()
            kept = await stream.take(3)
        page = (
            await client.get(
                "/v1/events", params={"follow": "false", "after": oldest.id}, headers=AUTH
            )
        ).json()

    assert truncated.event == "truncated" and truncated.id is None
    assert truncated.data["after"] == oldest.id
    assert [m.id for m in kept] == [item["id"] for item in page["items"]]
    assert page["truncated"] is True


async def test_keep_alive_comments_while_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.events, "KEEPALIVE_SECONDS", 0.05)
    async with csms() as (_running, client), sse(client) as stream:
        await stream.until_comment("keep-alive")
        await stream.until_comment("keep-alive")
    assert stream.comments.count("keep-alive") >= 2


async def test_bad_parameters_and_keys_are_refused_in_the_error_shape() -> None:
    async with csms() as (_running, client):
        unknown = await client.get("/v1/events", params={"kinds": "station.exploded"}, headers=AUTH)
        cursor = await client.get("/v1/events", params={"after": "yesterday"}, headers=AUTH)
        header = await client.get("/v1/events", headers={**AUTH, "Last-Event-ID": "not-an-id"})
        anonymous = await client.get("/v1/events")
        wrong = await client.get("/v1/events", headers={"Authorization": "Bearer nope-nope-nope"})
        created = await client.post(
            "/v1/api-keys", json={"name": "viewer", "scope": "read"}, headers=AUTH
        )
        reader = {"Authorization": f"Bearer {created.json()['key']}"}
        allowed = await client.get("/v1/events", params={"follow": "false"}, headers=reader)

    assert unknown.status_code == 400 and unknown.json()["code"] == "invalid_parameter"
    assert unknown.json()["details"] == {"field": "kinds", "in": "query", "rule": "enum"}
    assert cursor.status_code == 400 and cursor.json()["details"]["field"] == "after"
    assert header.status_code == 400 and header.json()["details"]["field"] == "Last-Event-ID"
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"
    assert wrong.status_code == 401
    assert allowed.status_code == 200 and "items" in allowed.json()


async def test_the_stream_stops_when_the_client_goes() -> None:
    async with csms() as (running, client):
        counting = CountingLog(running.services.events)
        running.services.events = counting
        async with sse(client) as stream:
            async with asyncio.timeout(scaled(5)):
                while counting.waiting == 0:  # noqa: ASYNC110 (polls a counter)
                    await asyncio.sleep(0.01)
            await stream.response.aclose()
        async with asyncio.timeout(scaled(5)):
            while counting.waiting:  # noqa: ASYNC110 (polls a counter)
                await asyncio.sleep(0.01)
    assert counting.waiting == 0


async def test_a_server_shutdown_ends_open_streams_cleanly() -> None:
    settings = Settings.model_validate(
        {
            "listen_port": 0,
            "api_port": 0,
            "ping_interval": None,
            "ping_timeout": None,
            "api_admin_key": ADMIN,
        }
    )
    embedded = processes.embedded(settings)
    running = await embedded.__aenter__()
    stopping: asyncio.Task[bool | None] | None = None
    lines: list[str] = []
    try:
        assert running.api is not None
        url = running.api.url + "/v1/events"
        async with (
            httpx.AsyncClient(timeout=scaled(10)) as client,
            client.stream("GET", url, headers=AUTH) as response,
        ):
            body = response.aiter_lines()
            lines.append(await anext(body))
            stopping = asyncio.create_task(embedded.__aexit__(None, None, None))
            # The server ends the response: a clean end of the chunked body, not the cut
            # uvicorn makes when its shutdown grace (5 s) runs out, which would raise here.
            async with asyncio.timeout(scaled(4)):
                lines.extend([line async for line in body])
        await asyncio.wait_for(stopping, scaled(4))
    finally:
        if stopping is None:
            await embedded.__aexit__(None, None, None)
    assert lines[0] == ": connected"


# --- csms events -----------------------------------------------------------------------------


def _run(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> Any:
    async def run() -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(
            main, ["events", *argv, "--api-url", url, "--api-key", ADMIN]
        )
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run()


async def test_csms_events_prints_the_log_for_people_and_as_json_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with csms() as (running, client):
        async with station(running, "CS-P", "ocpp2.0.1") as cs:
            await _session_start(cs)
        await _until_logged(running.services.events, "station.disconnected")
        logged = (await client.get("/v1/events", params={"follow": "false"}, headers=AUTH)).json()
        url = client.base_url.join("/").__str__()
        code, out, _ = await _run(capsys, url, "--json")
        people_code, people, _ = await _run(
            capsys, url, "--station", "CS-P", "--kind", "station.booted"
        )
        after_code, after, _ = await _run(
            capsys, url, "--json", "--after", logged["items"][2]["id"], "--limit", "1"
        )
        refused_code, _, refused = await _run(capsys, url, "--kind", "nope")

    assert code == 0 and [json.loads(line) for line in out.splitlines()] == logged["items"]
    assert people_code == 0
    [line] = people.splitlines()
    assert "station.booted" in line and "CS-P" in line and "vendor=ACME" in line
    assert "status=Accepted" in line
    assert after_code == 0 and [json.loads(x) for x in after.splitlines()] == logged["items"][3:4]
    assert refused_code == 2 and "unknown event kind 'nope'" in refused


async def test_csms_events_follow_prints_live_events_until_its_limit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with csms() as (running, client):
        counting = CountingLog(running.services.events)
        running.services.events = counting
        url = client.base_url.join("/").__str__()
        follow = asyncio.create_task(
            _run(
                capsys,
                url,
                "--follow",
                "--json",
                "--limit",
                "3",
                "--kind",
                "connector.status",
                "--kind",
                "transaction.started",
                "--kind",
                "station.disconnected",
            )
        )
        async with asyncio.timeout(scaled(5)):
            while counting.waiting == 0:  # noqa: ASYNC110 (polls a counter)
                await asyncio.sleep(0.01)
        async with station(running, "CS-F", "ocpp2.0.1") as cs:
            await _session_start(cs)
        code, out, err = await asyncio.wait_for(follow, scaled(10))

    assert code == 0, err
    assert [json.loads(line)["kind"] for line in out.splitlines()] == [
        "connector.status",
        "transaction.started",
        "station.disconnected",
    ]
