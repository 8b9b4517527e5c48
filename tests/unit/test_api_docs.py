"""docs/api.md is executed: its ``sh`` blocks run in order, in one bash, against ``csms run``'s
composition (gateway + manager + API, embedded) with a real WebSocket station CS001 that
booted and started a transaction, exactly as a reader would paste them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from cli import processes
from csms.config import Settings
from tests.timing import timeout as scaled

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
STATION = "CS001"

BOOT = {"chargingStation": {"model": "Wallbox", "vendorName": "ACME"}, "reason": "PowerUp"}
STARTED = {
    "eventType": "Started",
    "timestamp": "2026-01-15T12:00:00Z",
    "triggerReason": "Authorized",
    "seqNo": 0,
    "transactionInfo": {"transactionId": "TX-1"},
    "idToken": {"idToken": "RFID-0001", "type": "ISO14443"},
    "evse": {"id": 1, "connectorId": 1},
}

# Stands in for jq where it is not installed: the doc uses only `jq -r .field`.
JQ_SHIM = """\
import json, sys
field = sys.argv[-1].lstrip(".")
value = json.load(sys.stdin)
value = value.get(field) if field else value
print("null" if value is None else value if isinstance(value, str) else json.dumps(value))
"""


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


class Station:
    """A 2.0.1 station on a raw socket: sends Calls, answers every CSMS call Accepted."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[tuple[str, Any]] = []
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
                await self.ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
            elif frame[1] in self._answers:
                self._answers[frame[1]].set_result(frame[2] if frame[0] == 3 else frame)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


@contextlib.asynccontextmanager
async def station(url: str) -> AsyncIterator[Station]:
    ws = await connect(url, subprotocols=["ocpp2.0.1"])  # type: ignore[list-item]
    cs = Station(ws)
    try:
        yield cs
    finally:
        await cs.close()


async def test_the_walk_through_runs_on_csms_run(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.fail("the docs walk-through needs curl")
    env = {**os.environ, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if shutil.which("jq") is None:
        shim = tmp_path / "jq"
        shim.write_text(f"#!{sys.executable}\n{JQ_SHIM}")
        shim.chmod(0o755)
        env["PATH"] = f"{tmp_path}:{env['PATH']}"
    settings = Settings(listen_port=0, api_port=0, ping_interval=None, ping_timeout=None)
    async with processes.embedded(settings) as running:
        assert running.api is not None and running.generated_admin_key is not None
        async with station(running.gateway.url_for(STATION)) as cs:
            assert (await cs.call("BootNotification", BOOT))["status"] == "Accepted"
            await cs.call("TransactionEvent", STARTED)
            env |= {"CSMS_API": running.api.url, "CSMS_API_KEY": running.generated_admin_key}
            script = "\n".join(shell_blocks(DOC.read_text()))
            process = await asyncio.create_subprocess_exec(
                "bash",
                "-euo",
                "pipefail",
                "-c",
                script,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), scaled(60))
            output = out.decode()
            assert process.returncode == 0, f"{output}\n{err.decode()}"
            assert ("Reset", {"type": "Immediate"}) in cs.received
    assert '"status":"ok"' in output
    assert '"payload":{"status":"Accepted"}' in output
    assert '"id_token":"RFID-0001"' in output and '"transaction_id":"TX-1"' in output
    assert output.rstrip().endswith("401")  # the revoked key
