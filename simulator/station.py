"""One simulated station: a WebSocket connection, its Calls, and its answers to the CSMS.

A station sends one Call at a time and waits for its answer, as OCPP-J requires; a reader
task takes the CSMS's answers and calls meanwhile. CSMS calls are answered by the version's
:class:`~simulator.messages.Dialect`, and what they ask for happens: TriggerMessage sends the
message, a remote start runs a session, a remote stop ends it, a new Basic auth password is
used from the next connection on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import time
from typing import Any

import msgspec
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from csms.versions import OcppVersion
from simulator.messages import Answer, SessionState, dialect_for
from simulator.stats import Stats

__all__ = ["CallFailed", "ConnectFailed", "SimulatedStation"]

_log = structlog.get_logger("simulator")

CALL, RESULT, ERROR = 2, 3, 4
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class ConnectFailed(Exception):
    """The station could not connect; ``kind`` says why (counted under ``connect:<kind>``)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class CallFailed(Exception):
    """A Call got no CallResult; ``kind`` is the CallError code, ``timeout`` or ``closed``."""

    def __init__(self, kind: str, description: str = "") -> None:
        super().__init__(f"{kind}: {description}" if description else kind)
        self.kind = kind


class SimulatedStation:
    def __init__(
        self,
        station_id: str,
        url: str,
        version: OcppVersion,
        stats: Stats,
        *,
        password: str | None = None,
        token: str = "SIMTOKEN",
        call_timeout: float = 30.0,
        open_timeout: float = 10.0,
        remote_meter_interval: float | None = None,
    ) -> None:
        self.station_id = station_id
        self.url = url
        self.version = version
        self.dialect = dialect_for(version)
        self.stats = stats
        self.password = password
        self.token = token
        self.call_timeout = call_timeout
        self.open_timeout = open_timeout
        self.remote_meter_interval = remote_meter_interval
        """Seconds between the meter values of a remotely started session (None: none are
        sent on their own; the caller drives :meth:`meter`)."""
        self.session: SessionState | None = None
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self._one_call = asyncio.Lock()
        self._follow_ups: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        return self._ws is not None

    # -- connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        headers = {}
        if self.password is not None:
            secret = base64.b64encode(f"{self.station_id}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {secret}"
        try:
            self._ws = await connect(
                self.url,
                subprotocols=[self.version.value],  # type: ignore[list-item]
                additional_headers=headers,
                open_timeout=self.open_timeout,
                ping_interval=None,
                max_size=2**20,
                # No permessage-deflate: what most station firmware does, and the same frames
                # for every CSMS a benchmark compares (compressing costs both ends CPU).
                compression=None,
            )
        except InvalidStatus as exc:
            raise ConnectFailed(f"http-{exc.response.status_code}") from None
        except TimeoutError:
            raise ConnectFailed("timeout") from None
        except InvalidHandshake as exc:
            raise ConnectFailed(type(exc).__name__) from None
        except OSError as exc:
            raise ConnectFailed(type(exc).__name__) from None
        if self._ws.subprotocol != self.version.value:
            await self._ws.close()
            self._ws = None
            raise ConnectFailed("subprotocol")
        self.stats.connected += 1
        self._reader = asyncio.create_task(self._read(self._ws), name=f"sim:{self.station_id}")

    async def close(self) -> None:
        """Close the connection (a clean WebSocket close) and stop its follow-up work."""
        for task in list(self._follow_ups):
            task.cancel()
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        self._fail_pending("closed")

    def drop(self) -> None:
        """Cut the TCP connection without a close handshake (power loss, network gone)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.transport.abort()
        self._fail_pending("closed")

    # -- calls ------------------------------------------------------------------------------

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a Call and return the CallResult payload; :class:`CallFailed` otherwise.

        The round trip is counted under the action; a failure under ``<action>:<kind>``.
        """
        async with self._one_call:
            ws = self._ws
            if ws is None:
                self.stats.errors[f"{action}:closed"] += 1
                raise CallFailed("closed")
            message_id = f"{next(self._ids)}"
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._pending[message_id] = future
            started = time.perf_counter()
            try:
                await ws.send(_encode([CALL, message_id, action, payload]), text=True)
                async with asyncio.timeout(self.call_timeout):
                    answer = await future
            except TimeoutError:
                self.stats.errors[f"{action}:timeout"] += 1
                raise CallFailed("timeout") from None
            except ConnectionClosed:
                self.stats.errors[f"{action}:closed"] += 1
                raise CallFailed("closed") from None
            except CallFailed as failed:
                self.stats.errors[f"{action}:{failed.kind}"] += 1
                raise
            finally:
                self._pending.pop(message_id, None)
            self.stats.round_trip(action, time.perf_counter() - started)
            return answer if isinstance(answer, dict) else {}

    async def boot(self, reason: str = "PowerUp") -> bool:
        """BootNotification; True when Accepted (counted), otherwise counted as an error."""
        answer = await self.call(*self.dialect.boot(reason))
        status = str(answer.get("status"))
        if status == "Accepted":
            self.stats.booted += 1
            return True
        self.stats.errors[f"boot:{status}"] += 1
        return False

    async def heartbeat(self) -> None:
        await self.call("Heartbeat", {})

    async def status(self, status: str, connector: int = 1) -> None:
        await self.call(*self.dialect.status(connector, status))

    async def start_session(
        self, *, remote_start_id: int | None = None, authorize: bool = True
    ) -> bool:
        """Authorize (unless remotely started), then start a transaction on connector 1."""
        if self.session is not None:
            return False
        if authorize:
            answer = await self.call(*self.dialect.authorize(self.token))
            if not self.dialect.authorized(answer):
                status = answer.get("idTokenInfo", answer.get("idTagInfo", {})).get("status")
                self.stats.errors[f"authorize:{status}"] += 1
                return False
        session = SessionState(self.token, remote_start_id=remote_start_id)
        if self.version is not OcppVersion.OCPP16:
            session.transaction_id = f"{self.station_id}-{time.time_ns():x}"
        self.session = session
        await self.status(self.dialect.occupied)
        answer = await self.call(*self.dialect.start(session))
        self.dialect.started(session, answer)
        return True

    async def meter(self, wh: int = 250) -> None:
        """One periodic meter value of the running session, ``wh`` more on the register."""
        if self.session is None:
            return
        self.session.energy_wh += wh
        await self.call(*self.dialect.meter(self.session))

    async def stop_session(self) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        await self.call(*self.dialect.stop(session))
        self.stats.sessions += 1
        await self.status("Available")

    # -- the reader -------------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self._on_frame(raw)
        except ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None
            self._fail_pending("closed")

    def _on_frame(self, raw: str | bytes) -> None:
        try:
            frame = _decode(raw)
            kind, message_id = frame[0], str(frame[1])
        except (msgspec.DecodeError, ValueError, TypeError, IndexError, KeyError):
            self.stats.errors["frame:undecodable"] += 1
            return
        if kind == CALL:
            self._answer_csms_call(message_id, str(frame[2]), frame[3] if len(frame) > 3 else {})
            return
        future = self._pending.get(message_id)
        if future is None or future.done():
            self.stats.errors["frame:unexpected-answer"] += 1
            return
        if kind == RESULT:
            future.set_result(frame[2] if len(frame) > 2 else {})
        elif kind == ERROR:
            code = str(frame[2]) if len(frame) > 2 else "GenericError"
            future.set_exception(CallFailed(code, str(frame[3]) if len(frame) > 3 else ""))

    def _answer_csms_call(self, message_id: str, action: str, payload: Any) -> None:
        answer = self.dialect.answer(action, payload if isinstance(payload, dict) else {})
        self.stats.csms_calls[action] += 1
        if answer.error_code is not None:
            frame: list[Any] = [ERROR, message_id, answer.error_code, answer.error_description, {}]
        else:
            frame = [RESULT, message_id, answer.payload or {}]
        task = asyncio.create_task(self._reply_then_follow(frame, answer))
        self._follow_ups.add(task)
        task.add_done_callback(self._follow_ups.discard)

    async def _reply_then_follow(self, frame: list[Any], answer: Answer) -> None:
        ws = self._ws
        if ws is None:
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(_encode(frame), text=True)
        if answer.new_password is not None:
            self.password = answer.new_password
        try:
            await self._follow_up(answer)
        except CallFailed:
            pass  # counted by call()
        except Exception as exc:  # a simulator bug must show, not vanish with the task
            self.stats.errors[f"follow-up:{type(exc).__name__}"] += 1
            _log.exception("follow-up failed", station=self.station_id, action=answer.follow_up)

    async def _follow_up(self, answer: Answer) -> None:
        """Do what the answered CSMS call asked for."""
        match answer.follow_up:
            case "boot":
                await self.boot("Triggered")
            case "heartbeat":
                await self.heartbeat()
            case "status":
                await self.status("Available" if self.session is None else self.dialect.occupied)
            case "start":
                started = answer.remote_start
                if "idToken" in started:
                    self.token = str(started["idToken"].get("idToken", self.token))
                elif "idTag" in started:
                    self.token = str(started["idTag"])
                remote_id = started.get("remoteStartId")
                started_now = await self.start_session(
                    remote_start_id=int(remote_id) if remote_id is not None else None,
                    authorize=False,
                )
                if started_now and self.remote_meter_interval:
                    task = asyncio.create_task(
                        self._meter_until_stopped(self.remote_meter_interval)
                    )
                    self._follow_ups.add(task)
                    task.add_done_callback(self._follow_ups.discard)
            case "stop":
                await self.stop_session()

    async def _meter_until_stopped(self, interval: float) -> None:
        """Meter values of a remotely started session until it is stopped (or the connection
        goes): a charging EV as the CSMS sees it."""
        session = self.session
        while self.session is session and session is not None and self.connected:
            await asyncio.sleep(interval)
            if self.session is not session:
                return
            with contextlib.suppress(CallFailed):
                await self.meter()

    def _fail_pending(self, kind: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CallFailed(kind))
        self._pending.clear()
