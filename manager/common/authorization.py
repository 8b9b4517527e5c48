"""Authorization: one token decision, mapped to 1.6 ``idTagInfo`` or 2.0.1 ``idTokenInfo``;
ConcurrentTx only when a token starts a transaction while charging elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from manager.context import CallContext, iso
from services.models import (
    Authorization,
    AuthorizationStatus,
    Transaction,
    TransactionState,
)
from services.rules import parse_time

__all__ = [
    "NO_AUTHORIZATION",
    "authorize",
    "authorize_start",
    "id_tag_info",
    "id_token_info",
]

NO_AUTHORIZATION = "NoAuthorization"
"""2.0.1 IdTokenEnumType for transactions the station runs without any authorization."""

_V16_STATUSES = frozenset(
    {
        AuthorizationStatus.ACCEPTED,
        AuthorizationStatus.BLOCKED,
        AuthorizationStatus.EXPIRED,
        AuthorizationStatus.INVALID,
        AuthorizationStatus.CONCURRENT_TX,
    }
)
_V16_ID_TAG_MAX = 20
_V201_ID_TOKEN_MAX = 36


async def authorize(
    ctx: CallContext, id_token: str, token_type: str | None = None
) -> Authorization:
    """The token store's decision for one presentation of a token at this station.

    A 2.0.1 ``NoAuthorization`` token carries no identity to check (the station charges
    without authorization by its own configuration), so it is Accepted as it is.
    """
    if token_type == NO_AUTHORIZATION:
        return Authorization(status=AuthorizationStatus.ACCEPTED)
    return await ctx.services.tokens.authorize(id_token, token_type, ctx.station_id)


async def authorize_start(
    ctx: CallContext,
    id_token: str,
    token_type: str | None,
    *,
    same: Callable[[Transaction], bool],
) -> Authorization:
    """:func:`authorize` for starting a transaction: an Accepted token that already has an
    active transaction elsewhere (``same`` says which transactions are this one) is
    ConcurrentTx.

    Only used when a transaction starts: a token presented again to stop its own transaction
    must not be refused.
    """
    decision = await authorize(ctx, id_token, token_type)
    if decision.status is not AuthorizationStatus.ACCEPTED or token_type == NO_AUTHORIZATION:
        return decision
    for other in await ctx.services.transactions.find_by_token(id_token):
        if other.state is TransactionState.ACTIVE and not same(other):
            ctx.log.info(
                "concurrent_transaction",
                id_token=id_token,
                other_station=other.station_id,
                other_transaction=other.transaction_id,
            )
            return msgspec.structs.replace(decision, status=AuthorizationStatus.CONCURRENT_TX)
    return decision


def _wire_time(value: str | None) -> str | None:
    """An operator-provisioned time as an OCPP date-time (UTC, ``Z``); None if unreadable.

    Token expiries come from configuration, not from a schema-checked message, so they are
    normalised here rather than risking a response that fails its schema.
    """
    moment = parse_time(value)
    return iso(moment) if moment is not None else None


def id_tag_info(decision: Authorization) -> dict[str, Any]:
    """OCPP 1.6 ``IdTagInfo``: statuses 1.6 lacks (Unknown, NoCredit, ...) become Invalid;
    a group id longer than a 1.6 idTag (20) cannot be a parentIdTag and is left out."""
    status = decision.status if decision.status in _V16_STATUSES else AuthorizationStatus.INVALID
    info: dict[str, Any] = {"status": status.value}
    expiry = _wire_time(decision.expiry)
    if expiry is not None:
        info["expiryDate"] = expiry
    if decision.group_id is not None and len(decision.group_id) <= _V16_ID_TAG_MAX:
        info["parentIdTag"] = decision.group_id
    return info


def id_token_info(decision: Authorization) -> dict[str, Any]:
    """OCPP 2.0.1 ``IdTokenInfoType``; the group is a CSMS-issued (``Central``) token, left out
    when longer than an idToken (36)."""
    info: dict[str, Any] = {"status": decision.status.value}
    expiry = _wire_time(decision.expiry)
    if expiry is not None:
        info["cacheExpiryDateTime"] = expiry
    if decision.group_id is not None and len(decision.group_id) <= _V201_ID_TOKEN_MAX:
        info["groupIdToken"] = {"idToken": decision.group_id, "type": "Central"}
    return info
