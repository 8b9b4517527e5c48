"""Action rules: which OCPP actions a station may send, and which may be sent to it
(:mod:`services.action_rules`).

``GET/PUT/DELETE /v1/stations/{id}/rules`` (read scope to read, admin to change) and
``GET/PUT /v1/rules/defaults/{version}``. A PUT replaces the rules as a whole; a direction
left out has no rule of its own (the version's default applies). Every action named must be
an action of the version (a station's: of a version it may use), else ``422
unknown_action``; a rule that would keep a station from booting is ``422
boot_notification_denied``.

A CSMS call the rules deny is refused here with ``403 action_denied`` before anything is
sent: the operations layer's CallSender checks every call it sends (:func:`install` turns
its :class:`~services.action_rules.ActionDenied` into the error shape). The station's own
Calls are checked by the managers (SecurityError). Both read through a per-process cache:
a change applies within ``action_rules_cache_seconds`` on every process.

The station routes end in a fixed segment after the station id, which may contain ``/``
(``%2F``): the app registers this router before the stations router.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, FastAPI, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api.auth import Admin, Reader
from api.context import API_PREFIX, ApiContext, Context
from api.errors import ApiError, ErrorBody, error_response
from api.stations import station_not_found
from csms.versions import OcppVersion, supported
from services.action_rules import (
    ActionDenied,
    ActionList,
    ActionRules,
    EffectiveRules,
    InvalidRules,
    Source,
    check_rules,
    effective,
)
from services.models import StationRecord

__all__ = [
    "ActionListIn",
    "DefaultRulesOut",
    "RulesIn",
    "StationRulesOut",
    "install",
    "router",
]

router = APIRouter(prefix=API_PREFIX, tags=["action rules"])

MAX_ACTIONS = 128
"""Actions one list may name (a version has fewer than 70)."""

ActionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9]{0,63}$")]


class ActionListIn(BaseModel):
    """One direction's rule. Deny wins over allow."""

    model_config = ConfigDict(extra="forbid")

    allow: list[ActionName] | None = Field(
        default=None,
        max_length=MAX_ACTIONS,
        description="only these actions (omit or null: no allow list)",
    )
    deny: list[ActionName] = Field(
        default_factory=list, max_length=MAX_ACTIONS, description="never these actions"
    )

    def rule(self) -> ActionList:
        return ActionList(
            allow=frozenset(self.allow) if self.allow is not None else None,
            deny=frozenset(self.deny),
        )


class RulesIn(BaseModel):
    """The rules of a station or a version; a direction left out has no rule."""

    model_config = ConfigDict(extra="forbid")

    station_calls: ActionListIn | None = Field(
        default=None, description="Calls the station sends to the CSMS"
    )
    csms_calls: ActionListIn | None = Field(
        default=None, description="calls the CSMS sends to the station"
    )

    def rules(self) -> ActionRules:
        return ActionRules(
            station_calls=self.station_calls.rule() if self.station_calls else None,
            csms_calls=self.csms_calls.rule() if self.csms_calls else None,
        )


class ActionListOut(BaseModel):
    allow: list[str] | None = Field(description="only these actions; null: no allow list")
    deny: list[str]

    @classmethod
    def of(cls, rule: ActionList) -> ActionListOut:
        allow = sorted(rule.allow) if rule.allow is not None else None
        return cls(allow=allow, deny=sorted(rule.deny))


class RulesOut(BaseModel):
    station_calls: ActionListOut | None = Field(description="null: no rule of its own")
    csms_calls: ActionListOut | None

    @classmethod
    def of(cls, rules: ActionRules) -> RulesOut:
        station, csms = rules.station_calls, rules.csms_calls
        return cls(
            station_calls=ActionListOut.of(station) if station is not None else None,
            csms_calls=ActionListOut.of(csms) if csms is not None else None,
        )


class EffectiveListOut(ActionListOut):
    source: Source = Field(description="station (its own rule), default (the version's), none")


class EffectiveOut(BaseModel):
    station_calls: EffectiveListOut
    csms_calls: EffectiveListOut

    @classmethod
    def of(cls, rules: EffectiveRules) -> EffectiveOut:
        def side(rule: ActionList, source: Source) -> EffectiveListOut:
            out = ActionListOut.of(rule)
            return EffectiveListOut(allow=out.allow, deny=out.deny, source=source)

        return cls(
            station_calls=side(rules.station_calls, rules.station_source),
            csms_calls=side(rules.csms_calls, rules.csms_source),
        )


class StationRulesOut(BaseModel):
    station_id: str
    version: str | None = Field(
        description="the station's OCPP version, whose defaults `effective` includes (null: "
        "never connected, only its own rules apply)"
    )
    rules: RulesOut = Field(description="the station's own rules")
    effective: EffectiveOut = Field(description="what is enforced, per direction")


class DefaultRulesOut(BaseModel):
    version: OcppVersion
    rules: RulesOut


_STATION_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "unknown station"},
}
_WRITE_ERRORS: dict[int | str, dict[str, object]] = {
    422: {
        "model": ErrorBody,
        "description": "unknown_action (details.field names the list, details.action the "
        "action), boot_notification_denied, or a malformed body",
    },
}


async def _station(ctx: ApiContext, station_id: str) -> StationRecord:
    record = await ctx.services.stations.get(station_id)
    if record is None:
        raise station_not_found(station_id)
    return record


async def _station_view(ctx: ApiContext, record: StationRecord) -> StationRulesOut:
    """Read uncached, so an operator sees what the store holds (enforcement catches up
    within the cache's TTL)."""
    store = ctx.services.action_rules
    own = await store.get(record.station_id)
    version = record.ocpp_version if record.ocpp_version in _VERSIONS else None
    default = await store.get_default(version) if version is not None else ActionRules()
    return StationRulesOut(
        station_id=record.station_id,
        version=version,
        rules=RulesOut.of(own),
        effective=EffectiveOut.of(effective(own, default)),
    )


_VERSIONS = frozenset(version.value for version in supported())


def _checked(rules: ActionRules, versions: list[str]) -> ActionRules:
    try:
        check_rules(rules, versions)
    except InvalidRules as invalid:
        raise ApiError(
            422,
            invalid.code,
            str(invalid),
            {"field": invalid.field, "in": "body", "action": invalid.action},
        ) from None
    return rules


@router.get(
    "/stations/{station_id:path}/rules",
    response_model=StationRulesOut,
    summary="A station's action rules: its own and the effective ones",
    responses=_STATION_ERRORS,
)
async def get_station_rules(ctx: Context, _: Reader, station_id: str) -> StationRulesOut:
    return await _station_view(ctx, await _station(ctx, station_id))


@router.put(
    "/stations/{station_id:path}/rules",
    response_model=StationRulesOut,
    summary="Replace a station's action rules",
    responses={**_STATION_ERRORS, **_WRITE_ERRORS},
)
async def put_station_rules(
    ctx: Context, _: Admin, station_id: str, body: Annotated[RulesIn, Body()]
) -> StationRulesOut:
    record = await _station(ctx, station_id)
    versions = [v for v in record.allowed_versions if v in _VERSIONS] or sorted(_VERSIONS)
    rules = _checked(body.rules(), versions)
    await ctx.services.action_rules.put(station_id, rules)
    return await _station_view(ctx, record)


@router.delete(
    "/stations/{station_id:path}/rules",
    status_code=204,
    summary="Remove a station's own action rules (the version's defaults then apply)",
    responses=_STATION_ERRORS,
)
async def delete_station_rules(ctx: Context, _: Admin, station_id: str) -> Response:
    await _station(ctx, station_id)
    await ctx.services.action_rules.delete(station_id)
    return Response(status_code=204)


_Version = Annotated[OcppVersion, Path(description="ocpp1.6 or ocpp2.0.1")]


@router.get(
    "/rules/defaults/{version}",
    response_model=DefaultRulesOut,
    summary="The action rules of stations of a version that have none of their own",
)
async def get_default_rules(ctx: Context, _: Reader, version: _Version) -> DefaultRulesOut:
    rules = await ctx.services.action_rules.get_default(version.value)
    return DefaultRulesOut(version=version, rules=RulesOut.of(rules))


@router.put(
    "/rules/defaults/{version}",
    response_model=DefaultRulesOut,
    summary="Replace a version's default action rules (`{}` removes them)",
    responses=_WRITE_ERRORS,
)
async def put_default_rules(
    ctx: Context, _: Admin, version: _Version, body: Annotated[RulesIn, Body()]
) -> DefaultRulesOut:
    rules = _checked(body.rules(), [version.value])
    await ctx.services.action_rules.put_default(version.value, rules)
    return DefaultRulesOut(version=version, rules=RulesOut.of(rules))


def install(app: FastAPI) -> None:
    """Answer a CSMS call the rules deny (raised by the CallSender, from any route) 403."""

    @app.exception_handler(ActionDenied)
    async def _denied(_request: Request, exc: ActionDenied) -> JSONResponse:
        return error_response(
            403,
            "action_denied",
            str(exc),
            {
                "station_id": exc.station_id,
                "action": exc.action,
                "direction": exc.side.value,
                "rule": exc.rule,
                "source": exc.source.value,
            },
        )
