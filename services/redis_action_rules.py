"""Action rules in Redis (see :mod:`services.action_rules`), shared by every process.

Keys (``{p}`` is the store prefix, ``{station}`` the percent-encoded station id)::

    {p}action-rules:{station}     hash: station_calls, csms_calls -> ActionList (msgspec JSON)
    {p}action-rules-defaults      hash: {version}:station_calls, {version}:csms_calls -> ActionList

A direction without a rule has no field. Replacing rules is one MULTI/EXEC (DEL, HSET);
reading the effective rules of a station is one round trip (HGETALL and HMGET pipelined),
and :class:`~services.action_rules.CachedActionRules` makes even that rare.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
from redis.typing import EncodableT, FieldT

from services.action_rules import NO_RULES, ActionList, ActionRules, EffectiveRules, Side, effective
from services.redis_store import _RedisStore, encode_id
from services.resp import RespError

__all__ = ["RedisActionRuleStore"]

_decode = msgspec.json.Decoder(ActionList).decode
_encode = msgspec.json.Encoder().encode
_SIDES = tuple(Side)


def _fields(rules: ActionRules, prefix: str = "") -> dict[FieldT, EncodableT]:
    fields: dict[FieldT, EncodableT] = {}
    for side in _SIDES:
        rule = rules.side(side)
        if rule is not None:
            fields[f"{prefix}{side.value}"] = _encode(rule)
    return fields


def _rules(values: Mapping[str, bytes | str | None]) -> ActionRules:
    station = values.get(Side.STATION_CALLS.value)
    csms = values.get(Side.CSMS_CALLS.value)
    return ActionRules(
        station_calls=_decode(station) if station is not None else None,
        csms_calls=_decode(csms) if csms is not None else None,
    )


def _own(raw: Mapping[bytes | str, bytes | str]) -> ActionRules:
    """A station's rules from its hash (HGETALL)."""
    if not raw:
        return NO_RULES
    return _rules({(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()})


def _default(values: Sequence[bytes | str | None]) -> ActionRules:
    """A version's defaults from HMGET of its fields (in ``_SIDES`` order)."""
    return _rules(dict(zip((side.value for side in _SIDES), values, strict=True)))


class RedisActionRuleStore(_RedisStore):
    """:class:`~services.action_rules.ActionRuleStore` in Redis; failures raise
    StoreUnavailable."""

    def _key(self, station_id: str) -> str:
        return f"{self.prefix}action-rules:{encode_id(station_id)}"

    @property
    def _defaults_key(self) -> str:
        return f"{self.prefix}action-rules-defaults"

    async def get(self, station_id: str) -> ActionRules:
        with self._guard("get action rules"):
            raw = await self.client.hgetall(self._key(station_id))
        return _own(raw)

    async def put(self, station_id: str, rules: ActionRules) -> None:
        key = self._key(station_id)
        fields = _fields(rules)
        with self._guard("put action rules"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if fields:
                    pipe.hset(key, mapping=fields)
                await pipe.execute()

    async def delete(self, station_id: str) -> None:
        with self._guard("delete action rules"):
            await self.client.delete(self._key(station_id))

    def _default_names(self, version: str) -> list[str]:
        return [f"{version}:{side.value}" for side in _SIDES]

    async def get_default(self, version: str) -> ActionRules:
        with self._guard("get default action rules"):
            values = await self.client.hmget(self._defaults_key, self._default_names(version))
        return _default(values)

    async def put_default(self, version: str, rules: ActionRules) -> None:
        fields = _fields(rules, f"{version}:")
        with self._guard("put default action rules"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hdel(self._defaults_key, *self._default_names(version))
                if fields:
                    pipe.hset(self._defaults_key, mapping=fields)
                await pipe.execute()

    async def effective(self, station_id: str, version: str) -> EffectiveRules:
        with self._guard("read action rules"):
            if self.fast is not None:  # on the hot path (each Call, when the cache expired)
                own, default_values = await self.fast.pipeline(
                    [
                        (b"HGETALL", self._key(station_id)),
                        (b"HMGET", self._defaults_key, *self._default_names(version)),
                    ]
                )
                for reply in (own, default_values):
                    if isinstance(reply, RespError):
                        raise reply
                own_raw = dict(zip(own[::2], own[1::2], strict=True))
                return effective(_own(own_raw), _default(default_values))
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._key(station_id))
                pipe.hmget(self._defaults_key, self._default_names(version))
                own_raw, default_values = await pipe.execute()
        return effective(_own(own_raw), _default(default_values))
