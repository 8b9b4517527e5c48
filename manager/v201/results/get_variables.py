"""OCPP 2.0.1 GetVariables answer (B06): the values read become the station's device model."""

from __future__ import annotations

from manager.common import notifications
from manager.context import ResultContext, iso, utc_now
from operations import password as password_rotation
from services.station_state import AttributeValue, VariableRef, VariableUpdate

ACTION = "GetVariables"

MAX_LOGGED = 20
"""Variables not read that one log line names at most."""


async def handle_result(ctx: ResultContext) -> None:
    """Store each value read (attributeStatus Accepted) under its component, EVSE,
    connector, variable and attribute type; log the others in one line.

    A secret's value (``BasicAuthPassword``) is never stored.
    """
    if notifications.result_failed(ctx) or ctx.payload is None:
        return
    at = iso(utc_now())
    updates: list[VariableUpdate] = []
    not_read: list[dict[str, str | None]] = []
    for result in ctx.payload["getVariableResult"]:
        ref = VariableRef.from_ocpp(result["component"], result["variable"])
        attribute = result.get("attributeType", "Actual")
        if result["attributeStatus"] != "Accepted":
            not_read.append(
                {
                    "component": ref.component,
                    "variable": ref.variable,
                    "attribute": attribute,
                    "status": result["attributeStatus"],
                }
            )
            continue
        secret = password_rotation.is_secret_variable(ref.variable)
        value = AttributeValue(
            value=None if secret else result.get("attributeValue"), source=ACTION, updated_at=at
        )
        updates.append(VariableUpdate(ref=ref, values={attribute: value}))
    dropped = await ctx.services.station_state.update_variables(ctx.station_id, updates)
    ctx.log.info(
        "variables_read",
        stored=len(updates) - dropped,
        not_read=len(not_read),
        not_read_variables=not_read[:MAX_LOGGED] or None,
    )
    if dropped:
        ctx.log.warning("device_model_full", dropped=dropped)
