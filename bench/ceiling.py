"""The ceiling of the benchmarks: a bare websockets endpoint that parses each Call and answers
it with a fixed valid payload. No validation, no routing, no state: what the WebSocket layer
and JSON cost on this machine, and so the most any Python CSMS could do here.

    python bench/ceiling.py --port 9300
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
from typing import Any

import websockets

_ids = itertools.count(1)


def _answer(action: str) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    match action:
        case "BootNotification":
            return {"currentTime": now, "interval": 300, "status": "Accepted"}
        case "Heartbeat":
            return {"currentTime": now}
        case "Authorize":
            return {"idTokenInfo": {"status": "Accepted"}, "idTagInfo": {"status": "Accepted"}}
        case "StartTransaction":
            return {"transactionId": next(_ids), "idTagInfo": {"status": "Accepted"}}
        case _:
            return {}


async def _serve(connection: Any) -> None:
    try:
        async for raw in connection:
            frame = json.loads(raw)
            if frame[0] == 2:
                await connection.send(json.dumps([3, frame[1], _answer(frame[2])]))
    except websockets.ConnectionClosed:
        pass


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9300)
    args = parser.parse_args()
    async with websockets.serve(
        _serve,
        args.host,
        args.port,
        subprotocols=["ocpp2.0.1", "ocpp1.6"],  # type: ignore[list-item]
        ping_interval=None,
    ):
        print(f"ceiling endpoint on ws://{args.host}:{args.port}/", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
