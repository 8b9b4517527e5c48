"""The JSON schemas of CSMS-initiated requests, for clients that build forms from them.

``GET /v1/schemas/{version}`` lists the actions the CSMS may send in a version and
``GET /v1/schemas/{version}/{action}`` returns one action's request schema as the OCA
published it. The dashboard's generic call form is generated from these, so every action of
:data:`api.actions.CSMS_ACTIONS` can be sent without a page of its own.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel

from api.actions import CSMS_ACTIONS, ActionKind, classify
from api.auth import Reader
from api.context import API_PREFIX
from api.errors import ApiError, ErrorBody
from csms.versions import OcppVersion, spec

__all__ = ["ActionList", "router"]

router = APIRouter(prefix=API_PREFIX, tags=["schemas"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown version, or an action it has not"},
}


class ActionList(BaseModel):
    version: OcppVersion
    actions: list[str]


@router.get(
    "/schemas/{version}",
    response_model=ActionList,
    summary="The actions the CSMS may send to stations of a version",
    responses=_NOT_FOUND,
)
async def list_actions(_: Reader, version: str) -> ActionList:
    known = _version(version)
    return ActionList(version=known, actions=sorted(CSMS_ACTIONS[known]))


@router.get(
    "/schemas/{version}/{action}",
    summary="The JSON schema of a CSMS-initiated request",
    responses={
        200: {"description": "the OCA JSON schema (draft 6) of the request payload"},
        **_NOT_FOUND,
        422: {"model": ErrorBody, "description": "an action only stations send"},
    },
)
async def request_schema(
    _: Reader,
    version: str,
    action: Annotated[str, Path(pattern=r"^[A-Za-z][A-Za-z0-9]{0,63}$")],
) -> dict[str, Any]:
    known = _version(version)
    kind = classify(known, action)
    if kind is ActionKind.UNKNOWN:
        raise ApiError(
            404,
            "unknown_action",
            f"{known.value} has no action {action!r}",
            {"field": "action", "in": "path", "version": known.value},
        )
    if kind is ActionKind.STATION:
        raise ApiError(
            422,
            "not_a_csms_action",
            f"{action} is sent by stations, not by the CSMS ({known.value})",
            {"field": "action", "in": "path", "version": known.value},
        )
    return _schema(known, action)


def _version(version: str) -> OcppVersion:
    try:
        return OcppVersion(version)
    except ValueError:
        raise ApiError(
            404,
            "unknown_version",
            f"no OCPP version {version!r} (one of: {', '.join(v.value for v in OcppVersion)})",
            {"field": "version", "in": "path"},
        ) from None


@cache
def _schema(version: OcppVersion, action: str) -> dict[str, Any]:
    """The schema file as shipped (read once per process: they never change)."""
    row = spec(version.value)
    path = resources.files("ocpp_schemas").joinpath(
        row.schema_folder, row.request_schema.format(action=action)
    )
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema
