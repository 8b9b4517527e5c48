"""The comparison point of the benchmarks: a single-process CSMS written with the ``ocpp``
package, the usual Python choice. It validates and answers every message the simulator
sends and persists nothing (no registry, no transactions, no idempotency), so it is the
upper bound of "a Python CSMS on one core" rather than a like-for-like competitor.

    python bench/baseline_ocpp.py --port 9200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as result201

_ids = itertools.count(1)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Station201(ChargePoint201):  # type: ignore[misc]
    @on("BootNotification")  # type: ignore[misc]
    async def boot(self, **_: Any) -> Any:
        return result201.BootNotification(current_time=_now(), interval=300, status="Accepted")

    @on("Heartbeat")  # type: ignore[misc]
    async def heartbeat(self, **_: Any) -> Any:
        return result201.Heartbeat(current_time=_now())

    @on("StatusNotification")  # type: ignore[misc]
    async def status(self, **_: Any) -> Any:
        return result201.StatusNotification()

    @on("Authorize")  # type: ignore[misc]
    async def authorize(self, **_: Any) -> Any:
        return result201.Authorize(id_token_info={"status": "Accepted"})

    @on("TransactionEvent")  # type: ignore[misc]
    async def transaction_event(self, **kwargs: Any) -> Any:
        if kwargs.get("id_token") is not None:
            return result201.TransactionEvent(id_token_info={"status": "Accepted"})
        return result201.TransactionEvent()


class Station16(ChargePoint16):  # type: ignore[misc]
    @on("BootNotification")  # type: ignore[misc]
    async def boot(self, **_: Any) -> Any:
        return result16.BootNotification(current_time=_now(), interval=300, status="Accepted")

    @on("Heartbeat")  # type: ignore[misc]
    async def heartbeat(self, **_: Any) -> Any:
        return result16.Heartbeat(current_time=_now())

    @on("StatusNotification")  # type: ignore[misc]
    async def status(self, **_: Any) -> Any:
        return result16.StatusNotification()

    @on("Authorize")  # type: ignore[misc]
    async def authorize(self, **_: Any) -> Any:
        return result16.Authorize(id_tag_info={"status": "Accepted"})

    @on("StartTransaction")  # type: ignore[misc]
    async def start(self, **_: Any) -> Any:
        return result16.StartTransaction(
            transaction_id=next(_ids), id_tag_info={"status": "Accepted"}
        )

    @on("MeterValues")  # type: ignore[misc]
    async def meter_values(self, **_: Any) -> Any:
        return result16.MeterValues()

    @on("StopTransaction")  # type: ignore[misc]
    async def stop(self, **_: Any) -> Any:
        return result16.StopTransaction()


async def _serve_station(connection: Any) -> None:
    station_id = connection.request.path.rstrip("/").rsplit("/", 1)[-1]
    kind = Station16 if connection.subprotocol == "ocpp1.6" else Station201
    station = kind(station_id, connection)
    with contextlib.suppress(websockets.ConnectionClosed):
        await station.start()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    args = parser.parse_args()
    async with websockets.serve(
        _serve_station,
        args.host,
        args.port,
        subprotocols=["ocpp2.0.1", "ocpp1.6"],  # type: ignore[list-item]
        ping_interval=None,
    ):
        print(f"ocpp-package CSMS on ws://{args.host}:{args.port}/", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
