"""Schemathesis over the operator API's own OpenAPI document, against ``csms run``'s
composition (``cli.processes.embedded``: gateway, manager and API on the in-process bus).

Every operation gets a bounded number of generated requests, valid and invalid ones, sent
over real HTTP with an admin key; each answer must be no 5xx, carry a status code the
document lists for the operation, and match the documented schema and content type.

Generated ids rarely name anything, so a hook puts known ones in about every other case:
connected 2.0.1 and 1.6 stations (``ocpp`` package clients that answer every call
``NotImplemented``), a known offline one, a Rejected one, one that never connected, an active
transaction, and real action names. The generated calls thus also reach the code behind a
found station, up to the station's answer.

(schemathesis's ``pytest.from_fixture`` loader does not run under pytest 9, whose nodes
have no ``_nodeid``; the test drives schemathesis's strategies with hypothesis itself.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest
import schemathesis
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v201 import ChargePoint as ChargePoint201
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from websockets.asyncio.client import connect

from api.actions import CSMS_ACTIONS
from cli import processes
from csms.config import Settings
from services.models import RegistrationStatus, StationRecord, Transaction
from tests.timing import timeout as scaled

pytestmark = pytest.mark.slow

ADMIN = "schemathesis-admin-key-0123456789"
EXAMPLES = 60
"""Generated requests per operation, valid and invalid ones together."""
ONLINE = {"ST-201": "ocpp2.0.1", "ST-16": "ocpp1.6"}
"""Stations connected for the whole run."""
OFFLINE, REJECTED, NEVER = "ST-OFF", "ST-REJ", "ST-NEW"
TRANSACTION = "TX-1"
"""An active transaction of ST-201."""
KNOWN_STATIONS = (*ONLINE, OFFLINE, REJECTED, NEVER)
KNOWN_ACTIONS = (*sorted(set().union(*CSMS_ACTIONS.values())), "BootNotification")
"""Every CSMS action of either version, and one only stations send."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
]

_QUIET = logging.getLogger("tests.schemathesis.stations")
_QUIET.disabled = True
"""The stations' logger: they log every NotImplemented answer with a traceback."""


@contextlib.asynccontextmanager
async def _known_things(running: processes.Embedded) -> AsyncIterator[None]:
    """Connect the online stations; store the other known stations and the transaction."""
    services = running.manager.services
    async with contextlib.AsyncExitStack() as stack:
        for station, version in ONLINE.items():
            ws = await stack.enter_async_context(
                connect(running.gateway.url_for(station), subprotocols=[version])  # type: ignore[list-item]
            )
            kind = ChargePoint201 if version == "ocpp2.0.1" else ChargePoint16
            task = asyncio.create_task(kind(station, ws, logger=_QUIET).start())
            stack.callback(task.cancel)
        for _ in range(1000):
            records = [await services.stations.get(s) for s in ONLINE]
            if all(r is not None and r.online for r in records):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the stations never came online")
        await services.stations.put(StationRecord(station_id=OFFLINE, ocpp_version="ocpp2.0.1"))
        await services.stations.put(
            StationRecord(
                station_id=REJECTED,
                ocpp_version="ocpp1.6",
                registration=RegistrationStatus.REJECTED,
            )
        )
        await services.stations.put(StationRecord(station_id=NEVER))
        await services.transactions.update(
            "ST-201",
            TRANSACTION,
            lambda _: Transaction(
                station_id="ST-201",
                transaction_id=TRANSACTION,
                version="ocpp2.0.1",
                started_at="2026-01-15T12:00:00Z",
                id_token="TOKEN-1",
            ),
        )
        yield


@dataclass
class _Running:
    """The embedded CSMS on an event loop of its own, in a thread (schemathesis and
    hypothesis drive it synchronously, over HTTP)."""

    url: str = ""
    loop: asyncio.AbstractEventLoop | None = None
    stop: asyncio.Event | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
        finally:
            self.ready.set()

    async def _main(self) -> None:
        settings = Settings.model_validate(
            {
                "listen_port": 0,
                "api_port": 0,
                "api_admin_key": ADMIN,
                "call_timeout": 1.0,
                "ping_interval": None,
                "ping_timeout": None,
            }
        )
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        async with processes.embedded(settings) as embedded, _known_things(embedded):
            assert embedded.api is not None
            self.url = embedded.api.url
            self.ready.set()
            await self.stop.wait()


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    running = _Running()
    thread = threading.Thread(target=running.serve, name="embedded-csms", daemon=True)
    thread.start()
    assert running.ready.wait(scaled(30)), "the embedded CSMS did not start"
    if running.error is not None:
        raise running.error
    try:
        yield running.url
    finally:
        if running.loop is not None and running.stop is not None:
            running.loop.call_soon_threadsafe(running.stop.set)
        thread.join(scaled(15))


STREAMS = {"/v1/events"}
"""Operations that stream Server-Sent Events unless asked for a page (``follow=false``)."""


def known_ids(
    context: schemathesis.HookContext, path_parameters: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    """A ``flatmap_path_parameters`` hook: keep the generated ids, or put known ones in.

    Not for deletions: the known things must stay for the operations tested after them.
    """
    deleting = context.operation is not None and context.operation.method.upper() == "DELETE"
    if deleting or not path_parameters or "station_id" not in path_parameters:
        return st.just(path_parameters)
    replacements: dict[str, st.SearchStrategy[str]] = {
        "station_id": st.sampled_from(KNOWN_STATIONS),
        "transaction_id": st.just(TRANSACTION),
        "action": st.sampled_from(KNOWN_ACTIONS),
    }
    known = st.fixed_dictionaries(
        {key: replacements.get(key, st.just(value)) for key, value in path_parameters.items()}
    )
    return st.one_of(st.just(path_parameters), known)


def test_every_operation_keeps_to_the_openapi_document(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/v1/openapi.json")
    schema.hook("flatmap_path_parameters")(known_ids)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    failures: dict[str, str] = {}
    answers: Counter[tuple[str, int]] = Counter()
    codes: Counter[str] = Counter()
    operations = 0
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            failures[f"{result.err().method} {result.err().path}"] = str(result.err())
            continue
        operation = result.ok()
        operations += 1
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=strategy)
        def run(case: schemathesis.Case[Any]) -> None:
            if case.operation.path in STREAMS:
                # A live stream never ends: read its JSON page instead (the stream itself is
                # tested in tests/unit/test_api_events.py).
                case.query = {**(case.query or {}), "follow": "false"}
            response = case.call(headers=auth, timeout=scaled(20))
            checks = CHECKS
            documented = case.operation.definition.raw.get("responses", {})
            if response.status_code == 504 and "504" in documented:
                # A documented answer, not a server error: the station's answer did not come
                # within the wait (``?timeout=`` may be as small as it likes). The response
                # must still be the documented one.
                checks = [check for check in CHECKS if check is not not_a_server_error]
            case.validate_response(response, checks=checks, headers=auth)
            answers[case.operation.label, response.status_code] += 1
            if response.status_code >= 400:
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    codes[response.json()["code"]] += 1

        try:
            run()
        except (Exception, BaseExceptionGroup) as failure:  # run them all, report each
            failures[operation.label] = str(failure)
    assert not failures, "\n\n".join(
        f"{label}:\n{_head(text)}" for label, text in sorted(failures.items())
    )
    assert operations >= 20 and answers.total() >= operations * EXAMPLES // 2, answers
    # The known stations were found, and the calls reached their answers.
    assert codes["station_rejected"] and codes["station_offline"], codes
    assert {status for (_, status) in answers} >= {200, 403, 404, 409, 422}, answers


def _head(text: str, lines: int = 14) -> str:
    """The start of a schemathesis report: the failure, the response and the curl line."""
    return "\n".join(line[:400] for line in text.splitlines()[:lines])
