"""OCPP 2.0.1 SetVariables answer (B05): the outcome for each variable that was set, and the
values the station took, in its device model."""

from __future__ import annotations

from typing import Any

from manager import password_results, security_profile_results
from manager.common import notifications
from manager.context import ResultContext, iso, utc_now
from operations import password as password_rotation
from services.station_state import AttributeValue, VariableRef, VariableUpdate

ACTION = "SetVariables"

_TOOK_VALUE = ("Accepted", "RebootRequired")


def _key(entry: dict[str, Any]) -> tuple[Any, ...]:
    component, variable = entry["component"], entry["variable"]
    evse = component.get("evse") or {}
    return (
        component["name"],
        component.get("instance"),
        evse.get("id"),
        evse.get("connectorId"),
        variable["name"],
        variable.get("instance"),
        entry.get("attributeType", "Actual"),
    )


async def handle_result(ctx: ResultContext) -> None:
    """Log one line per variable with the value asked for and the status answered.

    Accepted and RebootRequired took the value (the latter after a reboot); Rejected,
    UnknownComponent, UnknownVariable and NotSupportedAttributeType are warnings.
    ``BasicAuthPassword`` values are never logged; once Accepted the password's hash replaces
    the registry's (see :mod:`operations.password`). The values taken are stored in the
    station's device model. A higher ``SecurityCtrlr.SecurityProfile`` taken is recorded as
    the station's pending upgrade (see :mod:`manager.security_profile_results`).
    """
    sets_password = password_rotation.sets_password(ctx.version, ctx.request)
    if sets_password and not ctx.ok:
        await password_results.apply_result(ctx)  # logs why nothing changed
        return
    if notifications.result_failed(ctx) or ctx.payload is None:
        return
    requested = {
        _key(entry): (
            password_rotation.REDACTED
            if password_rotation.is_secret_variable(entry["variable"]["name"])
            else entry.get("attributeValue")
        )
        for entry in ctx.request.payload.get("setVariableData") or ()
    }
    for result in ctx.payload["setVariableResult"]:
        status = result["attributeStatus"]
        log = ctx.log.info if status in _TOOK_VALUE else ctx.log.warning
        evse = result["component"].get("evse") or {}
        log(
            "variable_set",
            component=result["component"]["name"],
            component_instance=result["component"].get("instance"),
            evse_id=evse.get("id"),
            variable=result["variable"]["name"],
            variable_instance=result["variable"].get("instance"),
            attribute=result.get("attributeType", "Actual"),
            value=requested.get(_key(result)),
            status=status,
            reason=(result.get("attributeStatusInfo") or {}).get("reasonCode"),
        )
    if sets_password:
        await password_results.apply_result(ctx)
    await _store(ctx, ctx.payload["setVariableResult"], requested)
    await _record_upgrade(ctx, ctx.payload["setVariableResult"], requested)


async def _record_upgrade(
    ctx: ResultContext, results: list[dict[str, Any]], requested: dict[tuple[Any, ...], Any]
) -> None:
    """The highest security profile the station took (``SecurityCtrlr.SecurityProfile``,
    Actual) becomes its pending upgrade."""
    profiles = [
        profile
        for result in results
        if result["attributeStatus"] in _TOOK_VALUE
        and result["component"]["name"] == security_profile_results.SECURITY_CTRLR
        and result["variable"]["name"] == security_profile_results.SECURITY_PROFILE
        and result.get("attributeType", "Actual") == "Actual"
        and (profile := security_profile_results.parse_profile(requested.get(_key(result))))
        is not None
    ]
    if profiles:
        await security_profile_results.record_upgrade(ctx, max(profiles))


async def _store(
    ctx: ResultContext, results: list[dict[str, Any]], requested: dict[tuple[Any, ...], Any]
) -> None:
    """Put the values the station took into its device model, RebootRequired flagged (a
    secret's value never; an answer for a variable that was not asked for is left out).

    Runs after the password is settled, so a store outage here cannot keep a new password
    from the registry.
    """
    at = iso(utc_now())
    updates = [
        VariableUpdate(
            ref=VariableRef.from_ocpp(result["component"], result["variable"]),
            values={
                result.get("attributeType", "Actual"): AttributeValue(
                    value=None
                    if password_rotation.is_secret_variable(result["variable"]["name"])
                    else requested[_key(result)],
                    reboot_required=result["attributeStatus"] == "RebootRequired",
                    source=ACTION,
                    updated_at=at,
                )
            },
        )
        for result in results
        if result["attributeStatus"] in _TOOK_VALUE and _key(result) in requested
    ]
    dropped = await ctx.services.station_state.update_variables(ctx.station_id, updates)
    if dropped:
        ctx.log.warning("device_model_full", dropped=dropped)
