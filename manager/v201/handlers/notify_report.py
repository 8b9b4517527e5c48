"""OCPP 2.0.1 NotifyReport (B07/B08): one part of a device-model report, put into the
station's device model."""

from __future__ import annotations

from typing import Any

from manager.common.registration import require_accepted
from manager.context import CallContext
from operations import password as password_rotation
from services.station_state import (
    AttributeTraits,
    AttributeValue,
    ReportPart,
    VariableCharacteristics,
    VariableRef,
    VariableUpdate,
)

ACTION = "NotifyReport"


def _update(data: dict[str, Any], at: str) -> VariableUpdate:
    """What one reportData entry says: each attribute's value (when given) and traits (the
    schema's defaults when not given), and the characteristics."""
    ref = VariableRef.from_ocpp(data["component"], data["variable"])
    secret = password_rotation.is_secret_variable(ref.variable)
    values: dict[str, AttributeValue] = {}
    traits: dict[str, AttributeTraits] = {}
    for attribute in data["variableAttribute"]:
        kind = attribute.get("type", "Actual")
        if "value" in attribute:
            values[kind] = AttributeValue(
                value=None if secret else attribute["value"], source=ACTION, updated_at=at
            )
        traits[kind] = AttributeTraits(
            mutability=attribute.get("mutability", "ReadWrite"),
            persistent=attribute.get("persistent", False),
            constant=attribute.get("constant", False),
            updated_at=at,
        )
    found = data.get("variableCharacteristics")
    characteristics = None
    if found is not None:
        characteristics = VariableCharacteristics(
            data_type=found["dataType"],
            supports_monitoring=found["supportsMonitoring"],
            unit=found.get("unit"),
            min_limit=found.get("minLimit"),
            max_limit=found.get("maxLimit"),
            values_list=found.get("valuesList"),
            updated_at=at,
        )
    return VariableUpdate(ref=ref, values=values, traits=traits, characteristics=characteristics)


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Apply the part to the device model and acknowledge (the response is empty).

    Parts are applied as they come, in any order; a repeated part changes nothing (see
    :mod:`services.station_state`). A secret's value (``BasicAuthPassword``) is never stored.
    """
    await require_accepted(ctx)
    at = ctx.now_iso()
    part = ReportPart(
        request_id=payload["requestId"],
        seq_no=payload["seqNo"],
        tbc=payload.get("tbc", False),
        generated_at=payload["generatedAt"],
        variables=[_update(data, at) for data in payload.get("reportData") or ()],
    )
    progress = await ctx.services.station_state.apply_report_part(ctx.station_id, part)
    ctx.log.info(
        "notify_report",
        request_id=part.request_id,
        seq_no=part.seq_no,
        tbc=part.tbc,
        variables=len(part.variables),
        repeated=not progress.applied,
        parts=progress.parts,
        complete=progress.complete,
    )
    if progress.dropped:
        ctx.log.warning("device_model_full", dropped=progress.dropped)
    return {}
