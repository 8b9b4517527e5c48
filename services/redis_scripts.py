"""The Lua scripts of the Redis stores (:mod:`services.redis_store`), in one place.

A script runs atomically inside Redis and costs one round trip, which is what the stores
are built around: a write that depends on what is stored is one read and one :data:`APPLY`
(its checks and writes together), and a station Call begins with one :data:`BEGIN` (its
claim with the reads its handler needs). The client sends them with EVALSHA and loads them
again on NOSCRIPT (:meth:`services.resp.RespClient.evalsha` on the hot path, redis-py's
``Script`` elsewhere), so a restarted or flushed Redis costs one extra
round trip per script, once.

Scripts read only keys named in KEYS, except :data:`BEGIN`'s set reads, which also read the
records their members name; the stores run on one Redis (not a cluster).
"""

from __future__ import annotations

from services.rules import INT32_MAX

__all__ = ["APPLY", "BEGIN", "CLAIM", "NEXT_ID", "RELEASE"]

_CLAIM_BODY = """
local held = redis.call('GET', KEYS[1])
local claim = 1
if held and string.sub(held, 1, 1) == 'A' then
  claim = held
elseif held and held == ARGV[1] then
  claim = 0
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
"""

CLAIM = (
    _CLAIM_BODY
    + """
return claim
"""
)
"""Claim KEYS[1] for the marker ``P<owner>`` in ARGV[1] (expiring after ARGV[2] ms): 1 when
taken (another owner's claim is taken over), 0 when the same owner holds it, the stored
``A<answer>`` when the Call was answered (see ``IdempotencyStore.claim``)."""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
"""Delete KEYS[1] only while it holds ARGV[1] (the owner's claim)."""

NEXT_ID = """
local value = redis.call('INCR', KEYS[1])
if value > tonumber(ARGV[1]) or value < 1 then
  redis.call('SET', KEYS[1], 1)
  value = 1
end
return value
"""
"""The next 1.6 transaction id from the counter KEYS[1], wrapping to 1 after ARGV[1]."""

APPLY = """
local i = 2
for _ = 1, tonumber(ARGV[1]) do
  local kind, key, arg = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2]
  i = i + 3
  local ok
  if kind == 'v' then
    local value = redis.call('GET', key)
    if value then ok = redis.sha1hex(value) == arg else ok = arg == '' end
  elseif kind == 'm' then
    ok = redis.call('SISMEMBER', key, arg) == 1
  elseif kind == 'n' then
    ok = redis.call('SISMEMBER', key, arg) == 0
  elseif kind == 'l' then
    ok = redis.call('LLEN', key) == tonumber(arg)
  else
    return redis.error_reply('unknown check ' .. kind)
  end
  if not ok then
    return 0
  end
end
while i <= #ARGV do
  local name, key, count = ARGV[i], KEYS[tonumber(ARGV[i + 1])], tonumber(ARGV[i + 2])
  local args = {}
  for j = 1, count do
    args[j] = ARGV[i + 2 + j]
  end
  i = i + 3 + count
  if name == 'max' then
    local old = redis.call('GET', key)
    if (not old) or args[1] > old then
      redis.call('SET', key, args[1])
    end
  elseif name == 'flag' then
    if redis.call('SCARD', args[1]) > 0 then
      redis.call('SADD', key, args[2])
    else
      redis.call('SREM', key, args[2])
    end
  else
    redis.call(name, key, unpack(args))
  end
end
return 1
"""
"""A checked write: every check first, then every write, or nothing at all.

ARGV[1] is the number of checks; each check is three fields (kind, key number in KEYS,
argument): ``v`` the key's value has the SHA-1 in the argument (``''``: the key has no
value), ``m`` / ``n`` the argument is / is not a member of the set, ``l`` the list has that
many items. The writes follow, each as its command, key number, argument count and
arguments; ``max`` sets the value only when the argument sorts after it (or there is none);
``flag`` makes its second argument a member of the set while the set named by its first
argument (a key an earlier write names) has members, and removes it otherwise.
Returns 1 when written, 0 when a check failed (what the writes were decided from changed
since it was read: read again and decide again)."""

BEGIN = (
    """
local function encode(text)
  return (string.gsub(text, '[^%w%-%._~]', function(c)
    return string.format('%%%02X', string.byte(c))
  end))
end
"""
    + _CLAIM_BODY
    + """
local found = {claim}
if claim == 1 then
  local i = 4
  while i <= #ARGV do
    local kind, key, arg = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2]
    i = i + 3
    if kind == 'get' then
      table.insert(found, redis.call('GET', key))
    elseif kind == 'is' then
      table.insert(found, redis.call('SISMEMBER', key, arg))
    elseif kind == 'ids' or kind == 'refs' then
      local members = redis.call('SMEMBERS', key)
      local records = {}
      for j, member in ipairs(members) do
        local name = member
        if kind == 'ids' then
          name = encode(member)
        end
        records[j] = redis.call('GET', arg .. name)
      end
      table.insert(found, {members, records})
    elseif kind == 'id' then
      local value = redis.call('INCR', key)
      if value > """
    + str(INT32_MAX)
    + """ or value < 1 then
        redis.call('SET', key, 1)
        value = 1
      end
      table.insert(found, {value, redis.call('GET', arg .. value)})
    else
      return redis.error_reply('unknown read ' .. kind)
    end
  end
end
if ARGV[3] ~= '' then
  local old = redis.call('GET', KEYS[2])
  if (not old) or ARGV[3] > old then
    redis.call('SET', KEYS[2], ARGV[3])
  end
end
return found
"""
)
"""A station Call's first round trip: claim KEYS[1] as :data:`CLAIM` does (ARGV[1], ARGV[2]),
then, only when the claim was taken, read what the Call's handler is about to read, then move
the station's last-seen KEYS[2] forward to ARGV[3] (``''``: leave it).

The reads follow from ARGV[4], three fields each (kind, key number in KEYS, argument):
``get`` the value (nil when none); ``is`` whether the argument is a member of the set;
``ids`` / ``refs`` the set's members and the value of the record each names, the argument
followed by the member (``ids``: percent-encoded as :func:`services.rules.encode_id` does);
``id`` the next 1.6 transaction id from the counter (as :data:`NEXT_ID`) and the value of
the record the argument followed by the id names. Returns ``{claim, results...}``."""
