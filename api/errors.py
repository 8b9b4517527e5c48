"""One JSON error shape for every API answer that is not a success.

    {"code": "station_offline", "message": "no gateway holds station CS001", "details": {...}}

``code`` is stable (clients branch on it), ``message`` is for people, ``details`` names the
failing part: ``field`` (``limit``, ``payload.type``, ...) and, where there is one, the
violated ``rule``. FastAPI's own request validation, unknown routes and unexpected
exceptions are answered in the same shape by the handlers :func:`install` adds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from csms.bus import BusUnavailable
from services.interfaces import StoreUnavailable

__all__ = ["ApiError", "ErrorBody", "install"]

_log = structlog.get_logger("api")


class ErrorBody(BaseModel):
    """The body of every error answer."""

    code: str = Field(description="stable machine-readable code, e.g. station_offline")
    message: str = Field(description="what went wrong, for people")
    details: dict[str, Any] = Field(
        default_factory=dict, description="the failing field (field, rule, ...) and context"
    )


class ApiError(Exception):
    """Raised by routes to answer ``status`` with the error shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(code=code, message=message, details=details or {})
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _field_of(location: tuple[Any, ...] | list[Any]) -> tuple[str, str]:
    """(where, field) of a validation error location such as ``("query", "limit")``."""
    parts = [str(part) for part in location]
    where = parts[0] if parts and parts[0] in ("body", "query", "path", "header") else ""
    rest = parts[1:] if where else parts
    if where == "body" and not rest:
        return where, "body"  # the body as a whole (not JSON, not an object)
    return where, ".".join(rest)


def _validation_details(exc: RequestValidationError) -> tuple[str, dict[str, Any]]:
    errors = []
    for error in exc.errors():
        where, field = _field_of(error.get("loc", ()))
        errors.append(
            {
                "field": field,
                "in": where,
                "rule": error.get("type", ""),
                "message": error.get("msg", ""),
            }
        )
    first = errors[0] if errors else {"field": "", "in": "", "rule": "", "message": "invalid"}
    message = f"{first['field'] or 'request'}: {first['message']}"
    details = {"field": first["field"], "in": first["in"], "rule": first["rule"]}
    if len(errors) > 1:
        details["errors"] = errors
    return message, details


def install(app: FastAPI) -> None:
    """Answer every failure of ``app`` in the error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = _validation_details(exc)
        return error_response(422, "invalid_request", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, {}, exc.headers)

    @app.exception_handler(StoreUnavailable)
    async def _store_down(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        _log.warning("store unavailable", error=str(exc))
        return error_response(
            503, "store_unavailable", "storage temporarily unavailable", {}, {"Retry-After": "1"}
        )

    @app.exception_handler(BusUnavailable)
    async def _bus_down(_request: Request, exc: BusUnavailable) -> JSONResponse:
        _log.warning("bus unavailable", error=str(exc))
        return error_response(
            503,
            "bus_unavailable",
            "message broker temporarily unavailable",
            {},
            {"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        _log.error("unexpected error", path=request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "internal error", {})
