"""Webhook subscriptions and the outbox in Redis, shared by API replicas, dispatchers and
delivery workers (the rules are in :mod:`services.webhooks`).

Keys (``{p}`` is the store prefix; subscription ids are hex, delivery ids
``<event id>.<subscription id>``, both safe in keys as they are)::

    {p}webhook:{sub}        Subscription (msgspec JSON)
    {p}webhooks             sorted set of subscription ids, every score 0 (listings)
    {p}whd:{delivery}       hash: the Delivery's fields, and ``token`` while it is claimed
    {p}whq:{sub}            sorted set: the subscription's unfinished deliveries by due time
    {p}wh-due               sorted set: subscriptions with nothing in flight, by their
                            earliest due delivery (what a claim looks at)
    {p}wh-flight            sorted set: subscriptions with a delivery in flight, by the end
                            of its lease (an expired one goes back to wh-due)
    {p}whh:{sub}            sorted set, every score 0, of "{created ms, 15 digits}:{delivery}"
                            (history, newest last; trimmed to max_history finished ones)
    {p}whx:{delivery}       dedupe mark, PX dedupe_ttl: this delivery was enqueued

Enqueue, claim, complete and delete are each one Lua script (one round trip, atomic). The
scripts build the per-subscription and per-delivery key names from the prefix and what they
read, so the outbox runs on one Redis (not a cluster), like the other stores.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import redis.asyncio as aioredis

from services.models import Page
from services.redis_store import DEFAULT_PREFIX, _RedisStore
from services.webhooks import (
    DEFAULT_DEDUPE_TTL,
    DEFAULT_MAX_HISTORY,
    Attempt,
    Claimed,
    Delivery,
    DeliveryState,
    Subscription,
    decode_subscription,
    delivery_page,
    delivery_query,
    encode_subscription,
    history_member,
    subscription_page,
    subscription_query,
)

__all__ = ["RedisWebhookStore"]

_TRIM = """
local function trim(p, sub, max)
  local hkey = p .. 'whh:' .. sub
  local excess = redis.call('ZCARD', hkey) - max
  if excess <= 0 then return end
  local members = redis.call('ZRANGE', hkey, 0, excess + 99)
  for _, member in ipairs(members) do
    if excess <= 0 then return end
    local dkey = p .. 'whd:' .. string.sub(member, 17)
    local state = redis.call('HGET', dkey, 'state')
    if state == false or state == 'delivered' or state == 'dead' then
      redis.call('DEL', dkey)
      redis.call('ZREM', hkey, member)
      excess = excess - 1
    end
  end
end
local function reschedule(p, sub)
  local first = redis.call('ZRANGE', p .. 'whq:' .. sub, 0, 0, 'WITHSCORES')
  if first[1] then redis.call('ZADD', p .. 'wh-due', first[2], sub) end
end
"""

# ARGV: prefix, dedupe ttl ms, max history, then per delivery 8 values: id, subscription,
# event id, event kind, body, created at, due, history member. Returns how many were new.
_ENQUEUE = (
    _TRIM
    + """
local p = ARGV[1]
local added = 0
for i = 4, #ARGV, 8 do
  local id, sub, due = ARGV[i], ARGV[i + 1], ARGV[i + 6]
  if redis.call('EXISTS', p .. 'webhook:' .. sub) == 1
      and redis.call('SET', p .. 'whx:' .. id, '1', 'NX', 'PX', ARGV[2]) then
    redis.call('HSET', p .. 'whd:' .. id, 'id', id, 'subscription_id', sub,
      'event_id', ARGV[i + 2], 'event_kind', ARGV[i + 3], 'body', ARGV[i + 4],
      'created_at', ARGV[i + 5], 'state', 'pending', 'attempts', 0, 'next_at', due)
    redis.call('ZADD', p .. 'whq:' .. sub, due, id)
    redis.call('ZADD', p .. 'whh:' .. sub, 0, ARGV[i + 7])
    if not redis.call('ZSCORE', p .. 'wh-flight', sub) then
      local current = redis.call('ZSCORE', p .. 'wh-due', sub)
      if not current or tonumber(due) < tonumber(current) then
        redis.call('ZADD', p .. 'wh-due', due, sub)
      end
    end
    trim(p, sub, tonumber(ARGV[3]))
    added = added + 1
  end
end
return added
"""
)

# ARGV: prefix, now, lease until, limit, then one token per claim. Returns the claimed
# deliveries' hashes (HGETALL arrays).
_CLAIM = (
    _TRIM
    + """
local p = ARGV[1]
local now = tonumber(ARGV[2])
local due = p .. 'wh-due'
local flight = p .. 'wh-flight'
for _, sub in ipairs(redis.call('ZRANGEBYSCORE', flight, '-inf', ARGV[2])) do
  redis.call('ZREM', flight, sub)
  reschedule(p, sub)
end
local out = {}
local subs = redis.call('ZRANGEBYSCORE', due, '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
for _, sub in ipairs(subs) do
  redis.call('ZREM', due, sub)
  local queue = p .. 'whq:' .. sub
  local first = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
  while first[1] and redis.call('EXISTS', p .. 'whd:' .. first[1]) == 0 do
    redis.call('ZREM', queue, first[1])
    first = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
  end
  if first[1] and tonumber(first[2]) <= now then
    local dkey = p .. 'whd:' .. first[1]
    redis.call('HINCRBY', dkey, 'attempts', 1)
    redis.call('HSET', dkey, 'last_attempt_at', ARGV[2], 'token', ARGV[5 + #out])
    redis.call('ZADD', flight, ARGV[3], sub)
    out[#out + 1] = redis.call('HGETALL', dkey)
  elseif first[1] then
    redis.call('ZADD', due, first[2], sub)
  end
end
return out
"""
)

# ARGV: prefix, delivery id, token, state, at, next at ('' = none), status ('' = none),
# error ('' = none), max history. Returns 1, or 0 when the token is not the current one.
_COMPLETE = (
    _TRIM
    + """
local p = ARGV[1]
local dkey = p .. 'whd:' .. ARGV[2]
if redis.call('HGET', dkey, 'token') ~= ARGV[3] then return 0 end
local sub = redis.call('HGET', dkey, 'subscription_id')
local queue = p .. 'whq:' .. sub
redis.call('HDEL', dkey, 'token', 'last_status', 'last_error', 'next_at')
redis.call('HSET', dkey, 'state', ARGV[4])
if ARGV[7] ~= '' then redis.call('HSET', dkey, 'last_status', ARGV[7]) end
if ARGV[8] ~= '' then redis.call('HSET', dkey, 'last_error', ARGV[8]) end
if ARGV[4] == 'failed' then
  redis.call('HSET', dkey, 'next_at', ARGV[6])
  redis.call('ZADD', queue, ARGV[6], ARGV[2])
else
  if ARGV[4] == 'delivered' then redis.call('HSET', dkey, 'delivered_at', ARGV[5]) end
  redis.call('ZREM', queue, ARGV[2])
end
redis.call('ZREM', p .. 'wh-flight', sub)
reschedule(p, sub)
trim(p, sub, tonumber(ARGV[9]))
return 1
"""
)

# ARGV: prefix, subscription id. Returns 1 when it existed.
_DELETE = """
local p = ARGV[1]
local sub = ARGV[2]
local existed = redis.call('DEL', p .. 'webhook:' .. sub)
redis.call('ZREM', p .. 'webhooks', sub)
redis.call('ZREM', p .. 'wh-due', sub)
redis.call('ZREM', p .. 'wh-flight', sub)
for _, member in ipairs(redis.call('ZRANGE', p .. 'whh:' .. sub, 0, -1)) do
  redis.call('DEL', p .. 'whd:' .. string.sub(member, 17))
end
for _, id in ipairs(redis.call('ZRANGE', p .. 'whq:' .. sub, 0, -1)) do
  redis.call('DEL', p .. 'whd:' .. id)
end
redis.call('DEL', p .. 'whh:' .. sub, p .. 'whq:' .. sub)
return existed
"""

_FLOATS = ("created_at", "next_at", "last_attempt_at", "delivered_at")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _delivery(fields: dict[str, str]) -> Delivery:
    status = fields.get("last_status")
    return Delivery(
        id=fields["id"],
        subscription_id=fields["subscription_id"],
        event_id=fields["event_id"],
        event_kind=fields["event_kind"],
        body=fields["body"],
        state=DeliveryState(fields["state"]),
        attempts=int(fields.get("attempts", "0")),
        last_status=int(status) if status else None,
        last_error=fields.get("last_error") or None,
        **{name: float(fields[name]) if fields.get(name) else None for name in _FLOATS[1:]},
        created_at=float(fields["created_at"]),
    )


def _pairs(raw: Sequence[bytes | str]) -> dict[str, str]:
    items = [_text(item) for item in raw]
    return dict(zip(items[::2], items[1::2], strict=True))


def _number(value: float) -> str:
    return repr(float(value))


class RedisWebhookStore(_RedisStore):
    """:class:`~services.webhooks.WebhookStore` in Redis; failures raise StoreUnavailable."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = DEFAULT_PREFIX,
        *,
        max_history: int = DEFAULT_MAX_HISTORY,
        dedupe_ttl: float = DEFAULT_DEDUPE_TTL,
    ) -> None:
        super().__init__(client, prefix)
        self._max_history = max_history
        self._dedupe_ms = max(1, round(dedupe_ttl * 1000))
        self._enqueue = client.register_script(_ENQUEUE)
        self._claim = client.register_script(_CLAIM)
        self._complete = client.register_script(_COMPLETE)
        self._delete = client.register_script(_DELETE)

    def _sub_key(self, subscription_id: str) -> str:
        return f"{self.prefix}webhook:{subscription_id}"

    @property
    def _all_key(self) -> str:
        return f"{self.prefix}webhooks"

    # subscriptions

    async def create(self, subscription: Subscription) -> None:
        with self._guard("create webhook"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self._sub_key(subscription.id), encode_subscription(subscription))
                pipe.zadd(self._all_key, {subscription.id.encode(): 0})
                await pipe.execute()

    async def get(self, subscription_id: str) -> Subscription | None:
        with self._guard("get webhook"):
            raw = await self.client.get(self._sub_key(subscription_id))
        return decode_subscription(raw) if raw is not None else None

    async def replace(self, subscription: Subscription) -> bool:
        with self._guard("update webhook"):
            done = await self.client.set(
                self._sub_key(subscription.id), encode_subscription(subscription), xx=True
            )
        return bool(done)

    async def delete(self, subscription_id: str) -> bool:
        with self._guard("delete webhook"):
            existed = await self._delete(args=[self.prefix, subscription_id])
        return bool(existed)

    async def list_subscriptions(
        self, *, cursor: str | None = None, limit: int = 100
    ) -> Page[Subscription]:
        query = subscription_query(cursor, limit)
        low = b"(" + query.after.encode() if query.after is not None else b"-"
        with self._guard("list webhooks"):
            members = await self.client.zrangebylex(
                self._all_key, low, b"+", start=0, num=query.limit + 1
            )
            ids = [_text(member) for member in members]
            raws = await self.client.mget([self._sub_key(i) for i in ids]) if ids else []
        return subscription_page(
            [decode_subscription(raw) for raw in raws if raw is not None], query.limit
        )

    async def subscriptions(self) -> list[Subscription]:
        with self._guard("read webhooks"):
            members = await self.client.zrangebylex(self._all_key, b"-", b"+")
            ids = [_text(member) for member in members]
            raws = await self.client.mget([self._sub_key(i) for i in ids]) if ids else []
        return [decode_subscription(raw) for raw in raws if raw is not None]

    # outbox

    async def enqueue(self, deliveries: Sequence[Delivery]) -> int:
        if not deliveries:
            return 0
        args: list[str | int] = [self.prefix, self._dedupe_ms, self._max_history]
        for delivery in deliveries:
            due = delivery.next_at if delivery.next_at is not None else delivery.created_at
            args += [
                delivery.id,
                delivery.subscription_id,
                delivery.event_id,
                delivery.event_kind,
                delivery.body,
                _number(delivery.created_at),
                _number(due),
                history_member(delivery),
            ]
        with self._guard("enqueue webhook deliveries"):
            added = await self._enqueue(args=args)
        return int(added)

    async def claim(self, now: float, lease: float, limit: int) -> list[Claimed]:
        tokens = [secrets.token_hex(8) for _ in range(limit)]
        until = now + lease
        with self._guard("claim webhook deliveries"):
            found = await self._claim(
                args=[self.prefix, _number(now), _number(until), limit, *tokens]
            )
        claimed = []
        for raw in found:
            fields = _pairs(raw)
            token = fields.pop("token")
            claimed.append(Claimed(delivery=_delivery(fields), token=token, lease_until=until))
        return claimed

    async def complete(self, claimed: Claimed, attempt: Attempt, next_at: float | None) -> bool:
        if attempt.delivered:
            state = DeliveryState.DELIVERED
        elif next_at is None:
            state = DeliveryState.DEAD
        else:
            state = DeliveryState.FAILED
        args = [
            self.prefix,
            claimed.delivery.id,
            claimed.token,
            state.value,
            _number(attempt.at),
            _number(next_at) if next_at is not None else "",
            str(attempt.status) if attempt.status is not None else "",
            attempt.error or "",
            self._max_history,
        ]
        with self._guard("complete webhook delivery"):
            done = await self._complete(args=args)
        return bool(done)

    async def delivery(self, delivery_id: str) -> Delivery | None:
        with self._guard("get webhook delivery"):
            raw = await self.client.hgetall(f"{self.prefix}whd:{delivery_id}")
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        fields.pop("token", None)
        return _delivery(fields)

    async def deliveries(
        self, subscription_id: str, *, cursor: str | None = None, limit: int = 100
    ) -> Page[Delivery]:
        checked, before = delivery_query(cursor, limit)
        high = b"(" + before.encode() if before is not None else b"+"
        with self._guard("list webhook deliveries"):
            members = [
                _text(member)
                for member in await self.client.zrevrangebylex(
                    f"{self.prefix}whh:{subscription_id}", high, b"-", start=0, num=checked + 1
                )
            ]
            async with self.client.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.hgetall(f"{self.prefix}whd:{member[16:]}")
                raws = await pipe.execute() if members else []
        items = []
        for member, raw in zip(members, raws, strict=True):
            if raw:
                fields = {_text(k): _text(v) for k, v in raw.items()}
                fields.pop("token", None)
                items.append((member, _delivery(fields)))
        return delivery_page(items, checked)
