"""OCPP 1.6 BootNotification (§4.2): register the station, answer the heartbeat interval."""

from __future__ import annotations

from typing import Any

from manager.common import events, registration
from manager.context import CallContext
from services.models import BootInfo

ACTION = "BootNotification"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Record what the charge point says about itself; the registration decision is shared
    with 2.0.1 (:func:`manager.common.registration.boot`). 1.6 has two serial numbers: the
    charge point's is preferred, the charge box's used when it is the only one."""
    info = BootInfo(
        vendor=payload["chargePointVendor"],
        model=payload["chargePointModel"],
        serial_number=payload.get("chargePointSerialNumber")
        or payload.get("chargeBoxSerialNumber"),
        firmware_version=payload.get("firmwareVersion"),
        iccid=payload.get("iccid"),
        imsi=payload.get("imsi"),
        meter_type=payload.get("meterType"),
        meter_serial_number=payload.get("meterSerialNumber"),
    )
    answer = await registration.boot(ctx, info)
    await events.station_booted(ctx, info, answer)
    return answer
