"""OCPP 1.6 GetConfiguration answer (§5.8): the charge point's configuration keys."""

from __future__ import annotations

from manager.common import notifications
from manager.context import ResultContext, iso, utc_now
from operations import password as password_rotation
from services.station_state import ConfigurationEntry

ACTION = "GetConfiguration"


async def handle_result(ctx: ResultContext) -> None:
    """A request for every key (no ``key`` list) replaces the stored configuration; one for
    some keys updates those and forgets its ``unknownKey`` ones. A secret's value
    (``AuthorizationKey``) is never stored."""
    if notifications.result_failed(ctx) or ctx.payload is None:
        return
    at = iso(utc_now())
    entries = [
        ConfigurationEntry(
            key=item["key"],
            readonly=item["readonly"],
            value=None if password_rotation.is_secret_key(item["key"]) else item.get("value"),
            source=ACTION,
            updated_at=at,
        )
        for item in ctx.payload.get("configurationKey") or ()
    ]
    unknown = list(ctx.payload.get("unknownKey") or ())
    store = ctx.services.station_state
    whole = not ctx.request.payload.get("key")
    if whole:
        dropped = await store.replace_configuration(ctx.station_id, entries)
    else:
        dropped = await store.update_configuration(ctx.station_id, entries, unknown)
    ctx.log.info(
        "configuration_read",
        keys=len(entries) - dropped,
        unknown_keys=unknown or None,
        replaced=whole,
    )
    if dropped:
        ctx.log.warning("configuration_full", dropped=dropped)
