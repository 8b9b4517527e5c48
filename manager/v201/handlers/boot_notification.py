"""OCPP 2.0.1 BootNotification (B01-B03): register the station, answer the interval."""

from __future__ import annotations

from typing import Any

from manager.common import events, registration
from manager.context import CallContext
from services.models import BootInfo

ACTION = "BootNotification"


async def handle(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Record the station's description and boot reason; the registration decision is
    shared with 1.6 (:func:`manager.common.registration.boot`)."""
    station = payload["chargingStation"]
    modem = station.get("modem") or {}
    info = BootInfo(
        vendor=station["vendorName"],
        model=station["model"],
        serial_number=station.get("serialNumber"),
        firmware_version=station.get("firmwareVersion"),
        iccid=modem.get("iccid"),
        imsi=modem.get("imsi"),
        reason=payload["reason"],
    )
    answer = await registration.boot(ctx, info)
    await events.station_booted(ctx, info, answer)
    return answer
