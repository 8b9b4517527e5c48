"""The manager's routing core: one envelope in, one answer (or a result handler run) out.

A :class:`Router` knows one OCPP version. It holds no I/O of its own: the worker hands it a
decoded :class:`~csms.envelope.Envelope` and the :class:`Deps` (services, settings, a
CallMaker); it checks the action and the payload against the OCA schemas, runs the handler and
returns the answer envelope. Every failure becomes the CallError the OCPP-J spec asks for, so
a station Call always gets exactly one answer and no handler fault escapes to the worker.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

import ocpp_schemas
from csms.config import Settings
from csms.envelope import Envelope, Kind
from csms.rpc import RpcError
from csms.versions import OcppVersion, error_code, spec, supported
from manager.common import registration
from manager.context import (
    CallContext,
    CallHandler,
    OcppError,
    ResultContext,
    ResultHandler,
)
from ocpp_schemas import Direction, SchemaViolation
from operations.call_maker import CallMaker
from services import Services, StoreUnavailable
from services.action_rules import Side, describe_refusal

__all__ = [
    "BOOT_NOTIFICATION",
    "MAX_DESCRIPTION",
    "Deps",
    "Router",
    "default_router",
    "default_routers",
    "error_answer",
    "load_handlers",
    "result_answer",
    "violation_error",
]

BOOT_NOTIFICATION = "BootNotification"
MAX_DESCRIPTION = 255
"""OCPP-J caps errorDescription at 255 characters."""

_log = structlog.get_logger("manager.router")

_RULE_ERRORS: dict[str, RpcError] = {
    "required": RpcError.OCCURRENCE_CONSTRAINT,
    # Item counts are occurrence (cardinality) constraints in OCPP's vocabulary.
    "minItems": RpcError.OCCURRENCE_CONSTRAINT,
    "maxItems": RpcError.OCCURRENCE_CONSTRAINT,
    "type": RpcError.TYPE_CONSTRAINT,
    "enum": RpcError.PROPERTY_CONSTRAINT,
    "const": RpcError.PROPERTY_CONSTRAINT,
    "maxLength": RpcError.PROPERTY_CONSTRAINT,
    "minLength": RpcError.PROPERTY_CONSTRAINT,
    "pattern": RpcError.PROPERTY_CONSTRAINT,
    "minimum": RpcError.PROPERTY_CONSTRAINT,
    "maximum": RpcError.PROPERTY_CONSTRAINT,
    "exclusiveMinimum": RpcError.PROPERTY_CONSTRAINT,
    "exclusiveMaximum": RpcError.PROPERTY_CONSTRAINT,
    "multipleOf": RpcError.PROPERTY_CONSTRAINT,
    "format": RpcError.PROPERTY_CONSTRAINT,
}


def violation_error(violation: SchemaViolation) -> RpcError:
    """The RPC fault a schema violation maps to (additionalProperties and the rest:
    FormatViolation, "syntactically incorrect")."""
    return _RULE_ERRORS.get(violation.rule, RpcError.FORMAT_VIOLATION)


@dataclass(frozen=True, slots=True)
class Deps:
    """What every handler context carries besides the message: one per manager instance."""

    services: Services
    settings: Settings
    calls: CallMaker


def error_answer(
    request: Envelope,
    code: str,
    description: str,
    details: dict[str, Any] | None = None,
) -> Envelope:
    """A CallError envelope answering ``request`` (description capped at 255 characters)."""
    return Envelope(
        kind=Kind.ERROR,
        station=request.station,
        version=request.version,
        message_id=request.message_id,
        action=request.action,
        error_code=code,
        error_description=description[:MAX_DESCRIPTION],
        error_details=details or {},
        meta=request.meta,
        gateway=request.gateway,
        connection=request.connection,
    )


def result_answer(request: Envelope, payload: dict[str, Any]) -> Envelope:
    """A CallResult envelope answering ``request``."""
    return Envelope(
        kind=Kind.RESULT,
        station=request.station,
        version=request.version,
        message_id=request.message_id,
        action=request.action,
        payload=payload,
        meta=request.meta,
        gateway=request.gateway,
        connection=request.connection,
    )


class Router:
    """Routes the envelopes of one OCPP version to their handlers.

    ``handlers`` answer station Calls (action -> ``async handle(ctx, payload)``);
    ``result_handlers`` consume the station's answers to CSMS calls
    (action -> ``async handle_result(ctx)``).
    """

    def __init__(
        self,
        version: str,
        handlers: Mapping[str, CallHandler],
        result_handlers: Mapping[str, ResultHandler],
    ) -> None:
        self.version = version
        self.actions = ocpp_schemas.actions(version)
        unknown = (set(handlers) | set(result_handlers)) - self.actions
        if unknown:
            # A typo in a registry would otherwise silently answer NotImplemented forever.
            raise ValueError(f"{version} has no action(s) {sorted(unknown)}")
        self.handlers = dict(handlers)
        self.result_handlers = dict(result_handlers)

    def code(self, error: RpcError) -> str:
        """Wire error code of ``error`` in this router's version."""
        return error_code(self.version, error)

    def check_call(self, envelope: Envelope) -> tuple[Envelope | None, CallHandler | None]:
        """Synchronous checks of a station Call: the rejection to send, or the handler to run.

        Returns ``(answer, None)`` when the call is refused without running a handler
        (unknown action, no handler, schema violation), else ``(None, handler)``.
        """
        action = envelope.action
        if not action:
            return error_answer(
                envelope, self.code(RpcError.FORMAT_VIOLATION), "Call without an action"
            ), None
        if action not in self.actions:
            return error_answer(
                envelope,
                self.code(RpcError.NOT_IMPLEMENTED),
                f"action {action!r} is not an OCPP {self.version} action",
            ), None
        handler = self.handlers.get(action)
        if handler is None:
            # Includes CSMS -> station actions (Reset, ...) sent the wrong way by a station.
            return error_answer(
                envelope,
                self.code(RpcError.NOT_SUPPORTED),
                f"action {action!r} is not supported by this CSMS",
            ), None
        try:
            ocpp_schemas.validate(self.version, action, Direction.REQUEST, envelope.payload)
        except SchemaViolation as violation:
            return error_answer(
                envelope,
                self.code(violation_error(violation)),
                violation.message,
                {"field": violation.field, "rule": violation.rule},
            ), None
        return None, handler

    async def registration_rejection(self, envelope: Envelope, deps: Deps) -> Envelope | None:
        """The SecurityError a station that is not Accepted gets for this Call, or None.

        For Calls refused before any handler runs (unknown action, no handler, schema
        violation): a Pending or Rejected station learns nothing about what the CSMS would
        accept from it (B02.FR.09, B03.FR.07). Handlers check the registration themselves
        for the Calls that reach them, so valid Calls cost no extra read here. None too when
        the registry cannot be read: the refusal then stands as it is. A station that is
        Accepted gets the SecurityError of its action rules instead when they deny the
        action (:meth:`action_denial`).
        """
        action = envelope.action or ""
        if action == BOOT_NOTIFICATION:
            return None
        ctx = self._context(envelope, deps, _log)
        try:
            held = await registration.current_registration(ctx)
        except Exception as exc:
            _log.debug("registration not checked", station=envelope.station, error=str(exc))
            return None
        refusal = registration.registration_refusal(held, action)
        if refusal is not None:
            return error_answer(envelope, self.code(refusal.error), refusal.description)
        try:
            return await self.action_denial(envelope, deps)
        except Exception as exc:
            _log.debug("action rules not checked", station=envelope.station, error=str(exc))
            return None

    async def action_denial(self, envelope: Envelope, deps: Deps) -> Envelope | None:
        """The SecurityError for a Call the station's action rules refuse, or None.

        Read through the process's rule cache (no store round trip for a cached station);
        raises StoreUnavailable when the rules cannot be read. Checked before any handler
        runs, also for Calls refused otherwise (so a denied action is always SecurityError).
        """
        action = envelope.action or ""
        rules = await deps.services.action_rules.effective(envelope.station, self.version)
        rule = rules.refusal(Side.STATION_CALLS, action)
        if rule is None:
            return None
        _, source = rules.side(Side.STATION_CALLS)
        _log.info(
            "call refused by action rules",
            station=envelope.station,
            version=self.version,
            action=action,
            message_id=envelope.message_id,
            rule=rule,
            source=source.value,
        )
        return error_answer(
            envelope,
            self.code(RpcError.SECURITY_ERROR),
            describe_refusal(action, rule),
            {"rule": rule, "source": source.value},
        )

    async def handle_call(self, envelope: Envelope, deps: Deps) -> Envelope:
        """Answer a station Call; never raises (faults become CallErrors)."""
        rejection, handler = self.check_call(envelope)
        if handler is None:
            assert rejection is not None
            return rejection
        return await self.call_handler(envelope, handler, deps)

    async def call_handler(
        self, envelope: Envelope, handler: CallHandler, deps: Deps, log: Any = None
    ) -> Envelope:
        """Run ``handler`` for a Call that passed :meth:`check_call`; never raises.

        A Call the station's action rules deny is answered SecurityError without running the
        handler; the worker stores that answer for idempotency like any other, so a repeat
        of the Call gets the same answer even if the rules change meanwhile. ``log``, the
        caller's logger bound to this Call (station, version, action, message id), saves
        binding another one per message."""
        action = envelope.action or ""
        if log is None:
            log = _log.bind(
                station=envelope.station,
                version=self.version,
                action=action,
                message_id=envelope.message_id,
            )
        try:
            denial = await self.action_denial(envelope, deps)
        except StoreUnavailable as exc:
            log.warning("action rules unavailable", error=str(exc))
            return error_answer(
                envelope, self.code(RpcError.INTERNAL_ERROR), "storage temporarily unavailable"
            )
        except Exception:
            log.exception("action rules check failed")
            return error_answer(envelope, self.code(RpcError.INTERNAL_ERROR), "internal error")
        if denial is not None:
            return denial
        ctx = self._context(envelope, deps, log)
        try:
            response = await handler(ctx, envelope.payload)
        except OcppError as exc:
            return error_answer(envelope, self.code(exc.error), exc.description, exc.details)
        except StoreUnavailable as exc:
            log.warning("store unavailable", error=str(exc))
            return error_answer(
                envelope,
                self.code(RpcError.INTERNAL_ERROR),
                "storage temporarily unavailable",
            )
        except Exception:
            log.exception("handler failed")
            return error_answer(envelope, self.code(RpcError.INTERNAL_ERROR), "internal error")
        try:
            ocpp_schemas.validate(self.version, action, Direction.RESPONSE, response)
        except SchemaViolation as violation:
            log.error(
                "handler returned an invalid response",
                field=violation.field,
                rule=violation.rule,
                error=violation.message,
            )
            return error_answer(envelope, self.code(RpcError.INTERNAL_ERROR), "internal error")
        return result_answer(envelope, response)

    def _context(self, envelope: Envelope, deps: Deps, log: Any) -> CallContext:
        return CallContext(
            station_id=envelope.station,
            version=self.version,
            message_id=envelope.message_id,
            action=envelope.action or "",
            services=deps.services,
            settings=deps.settings,
            calls=deps.calls,
            log=log,
            connection=envelope.connection,
            gateway=envelope.gateway,
            meta=envelope.meta,
        )

    def result_context(self, envelope: Envelope, deps: Deps) -> ResultContext | None:
        """Build the context of a station's answer (or its absence) to a CSMS call.

        A CallResult whose payload breaks the response schema is reported as a
        FormatViolation error (payload None). None when the envelope carries no request.
        """
        request = envelope.request
        if request is None:
            _log.warning(
                "answer without its original call dropped",
                station=envelope.station,
                version=self.version,
                kind=envelope.kind.value,
                message_id=envelope.message_id,
            )
            return None
        log = _log.bind(
            station=envelope.station,
            version=self.version,
            action=request.action,
            message_id=request.message_id,
        )
        ctx = ResultContext(
            station_id=envelope.station,
            version=self.version,
            request=request,
            services=deps.services,
            settings=deps.settings,
            calls=deps.calls,
            log=log,
        )
        if envelope.kind is Kind.RESULT:
            try:
                ocpp_schemas.validate(
                    self.version, request.action, Direction.RESPONSE, envelope.payload
                )
            except SchemaViolation as violation:
                log.warning(
                    "station answered with an invalid CallResult",
                    field=violation.field,
                    rule=violation.rule,
                    error=violation.message,
                )
                ctx.error_code = self.code(RpcError.FORMAT_VIOLATION)
                ctx.error_description = violation.message[:MAX_DESCRIPTION]
            except KeyError:
                log.warning("answer to an action this version does not define")
                ctx.error_code = self.code(RpcError.NOT_IMPLEMENTED)
                ctx.error_description = f"unknown action {request.action!r}"
            else:
                ctx.payload = envelope.payload
        elif envelope.kind is Kind.ERROR:
            ctx.error_code = envelope.error_code or self.code(RpcError.GENERIC)
            ctx.error_description = envelope.error_description
        elif envelope.kind is Kind.TIMEOUT:
            ctx.timed_out = True
            ctx.error_description = envelope.error_description
        elif envelope.kind is Kind.UNDELIVERED:
            ctx.undelivered = envelope.error_description or envelope.error_code or "undelivered"
        else:
            log.warning("not an answer", kind=envelope.kind.value)
            return None
        return ctx

    async def handle_result(self, envelope: Envelope, deps: Deps) -> bool:
        """Run the result handler for the answered action; True when one ran cleanly.

        Never raises. Without a handler the outcome is logged: a CallResult at info; a
        CallError, timeout or undelivered call at warning. A failing handler is logged with its
        traceback.
        """
        ctx = self.result_context(envelope, deps)
        if ctx is None:
            return False
        handler = self.result_handlers.get(ctx.request.action)
        if handler is None:
            if ctx.ok:
                ctx.log.info("call answered", kind=envelope.kind.value)
            else:
                # A CSMS call that failed must never go unnoticed, handler or not.
                ctx.log.warning(
                    "call failed",
                    kind=envelope.kind.value,
                    error_code=ctx.error_code,
                    error_description=ctx.error_description,
                    timed_out=ctx.timed_out,
                    undelivered=ctx.undelivered,
                )
            return False
        try:
            await handler(ctx)
        except StoreUnavailable as exc:
            ctx.log.warning("store unavailable in result handler", error=str(exc))
            return False
        except Exception:
            ctx.log.exception("result handler failed")
            return False
        return True


def load_handlers(version: str) -> tuple[Mapping[str, CallHandler], Mapping[str, ResultHandler]]:
    """The project's handler registries of ``version``, imported on first use so the core
    does not depend on every handler module at import time."""
    module = importlib.import_module(spec(version).handlers)
    handlers: Mapping[str, CallHandler] = module.HANDLERS
    result_handlers: Mapping[str, ResultHandler] = getattr(module, "RESULT_HANDLERS", {})
    return handlers, result_handlers


def default_router(version: str) -> Router:
    """A router wired with the project's handlers for ``version``."""
    handlers, result_handlers = load_handlers(version)
    return Router(version, handlers, result_handlers)


def default_routers() -> dict[OcppVersion, Router]:
    """One router per supported version, wired with the project's handlers."""
    return {version: default_router(version) for version in supported()}
