"""A bound on request bodies, checked before the app reads them.

Nothing the API accepts is larger than one OCPP frame (``max_frame_bytes``): a CSMS call's
payload has to fit in the frame the gateway sends, and tokens and keys are tiny. A bigger
body is answered 413 without being read into memory, whether it announces its length or
streams it (chunked).
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit"]


class _TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class BodyLimit:
    """ASGI middleware: at most ``limit`` bytes of request body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    announced = int(value)
                except ValueError:
                    announced = 0
                if announced > self.limit:
                    await self._refuse(send)
                    return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge(self.limit)  # answered 413 by the app's error handlers
            return message

        await self.app(scope, bounded, send)

    async def _refuse(self, send: Send) -> None:
        from api.errors import error_response

        response = error_response(
            413,
            "payload_too_large",
            f"request body over {self.limit} bytes",
            {"limit": self.limit},
        )
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})
