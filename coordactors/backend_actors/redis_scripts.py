"""The Lua scripts of the Redis backend, each with its contract.

Every mutation is one script, so it is atomic, and every change of membership
or leadership appends its event to the namespace's stream in the same
script: the event log can never disagree with the state.

Key layout (``ns`` is the namespace option).  Names cannot contain control
characters, so a composite key joins its parts with ``\x1f`` and no group or
member name can forge another's key:

    {ns}:groups                  SET of group names
    {ns}:group:{g}               HASH member -> entry JSON {"caps": ..., "token": ...}
    {ns}:alive:{g}\x1f{m}        STRING session token, PX session_ttl (liveness)
    {ns}:lock:{name}             STRING "<token>|<fence>|<member>", PX ttl
    {ns}:fence:{name}            STRING counter (INCR)
    {ns}:waiting:{name}          STRING "1", PX session_ttl: someone lately found the
                                 lock taken and may wait for it
    {ns}:events                  STREAM of {g, k: join|leave|leader|free, m}
"""

from __future__ import annotations

# Appends an event; used inside the scripts below.
_XADD = "redis.call('XADD', KEYS[{stream}], 'MAXLEN', '~', ARGV[{maxlen}], '*', 'g', {group}, 'k', {kind}, 'm', {member})"

JOIN = """
-- KEYS: 1 groups set, 2 group hash, 3 liveness key, 4 events stream
-- ARGV: 1 group, 2 member, 3 entry JSON, 4 token, 5 session ttl ms, 6 create (1/0), 7 stream maxlen
-- Returns: 'ok', 'nogroup', 'exists'
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  if ARGV[6] ~= '1' then return 'nogroup' end
  redis.call('SADD', KEYS[1], ARGV[1])
end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  if redis.call('EXISTS', KEYS[3]) == 1 then return 'exists' end
  -- a dead member's entry (its liveness key expired): it leaves first
  redis.call('HDEL', KEYS[2], ARGV[2])
  """ + _XADD.format(stream=4, maxlen=7, group="ARGV[1]", kind="'leave'", member="ARGV[2]") + """
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
""" + _XADD.format(stream=4, maxlen=7, group="ARGV[1]", kind="'join'", member="ARGV[2]") + """
return 'ok'
"""

LEAVE = """
-- KEYS: 1 groups set, 2 group hash, 3 liveness key, 4 events stream
-- ARGV: 1 group, 2 member, 3 token, 4 stream maxlen
-- Returns: 'ok', 'nogroup', 'notjoined' (not a member, or the membership is another session's)
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 'nogroup' end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 or redis.call('GET', KEYS[3]) ~= ARGV[3] then return 'notjoined' end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
""" + _XADD.format(stream=4, maxlen=4, group="ARGV[1]", kind="'leave'", member="ARGV[2]") + """
return 'ok'
"""

UPDATE = """
-- KEYS: 1 groups set, 2 group hash, 3 liveness key
-- ARGV: 1 group, 2 member, 3 entry JSON, 4 token
-- Returns: 'ok', 'nogroup', 'notjoined'
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 'nogroup' end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 or redis.call('GET', KEYS[3]) ~= ARGV[4] then return 'notjoined' end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 'ok'
"""

MEMBERS = """
-- Reaps dead members (liveness key gone) of one group, then lists it.
-- KEYS: 1 groups set, 2 group hash, 3 events stream
-- ARGV: 1 group, 2 liveness key prefix ('{ns}:alive:'), 3 stream maxlen
-- Returns: false if the group does not exist, else the list of live members
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return false end
local members = redis.call('HKEYS', KEYS[2])
local prefix = ARGV[2] .. ARGV[1] .. '\\31'
local live = {}
-- One MGET per 500 liveness keys: a redis.call per member would cost most of the time.
for first = 1, #members, 500 do
  local last = math.min(first + 499, #members)
  local keys = {}
  for i = first, last do keys[i - first + 1] = prefix .. members[i] end
  local alive = redis.call('MGET', unpack(keys))
  for i = first, last do
    local member = members[i]
    if alive[i - first + 1] then
      live[#live + 1] = member
    else
      redis.call('HDEL', KEYS[2], member)
      """ + _XADD.format(stream=3, maxlen=3, group="ARGV[1]", kind="'leave'", member="member") + """
    end
  end
end
return live
"""

DELETE_GROUP = """
-- KEYS: 1 groups set, 2 group hash, 3 events stream, 4 leader lock
-- ARGV: 1 group, 2 liveness key prefix, 3 stream maxlen
-- Returns: 'ok', 'nogroup', 'notempty'
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 'nogroup' end
for _, member in ipairs(redis.call('HKEYS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[2] .. ARGV[1] .. '\\31' .. member) == 1 then return 'notempty' end
  redis.call('HDEL', KEYS[2], member)
  """ + _XADD.format(stream=3, maxlen=3, group="ARGV[1]", kind="'leave'", member="member") + """
end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[4])
return 'ok'
"""

ACQUIRE = """
-- SET NX PX plus the fence INCR, in one script.
-- KEYS: 1 lock key, 2 fence key, 3 events stream, 4 waiting marker
-- ARGV: 1 '<token>|', 2 '|<member>', 3 ttl ms, 4 fence floor, 5 leader group or '', 6 member, 7 stream maxlen,
--       8 waiting marker ttl ms
-- Returns: the new fence, or false if the lock is held (and then marks the
-- lock as waited for, so that its release announces itself on the stream).
-- The fence comes from the counter, first raised to a clock-derived floor
-- (microseconds) if it is below it: a counter that is missing (first use, a
-- server that lost its data) or behind (a replica promoted before the last
-- INCRs reached it) never hands out a fence lower than one already given.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[8])
  return false
end
local counter = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if counter < tonumber(ARGV[4]) then redis.call('SET', KEYS[2], ARGV[4]) end
local fence = redis.call('INCR', KEYS[2])
-- Lua 5.1 would print a 16-digit number as 1.79e+15: format it exactly.
redis.call('SET', KEYS[1], ARGV[1] .. string.format('%d', fence) .. ARGV[2], 'PX', ARGV[3])
if ARGV[5] ~= '' then
  """ + _XADD.format(stream=3, maxlen=7, group="ARGV[5]", kind="'leader'", member="ARGV[6]") + """
end
return fence
"""

RELEASE = """
-- Deletes the lock only if it is still ours (same token and fence).
-- KEYS: 1 lock key, 2 events stream, 3 waiting marker
-- ARGV: 1 expected value, 2 lock name, 3 stream maxlen
-- Returns: 1 released, 0 not ours (expired or taken)
-- Only a lock someone lately found taken announces its release: an event per
-- release woke every session's stream reader for nothing.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[3]) == 1 then
  """ + _XADD.format(stream=2, maxlen=3, group="ARGV[2]", kind="'free'", member="''") + """
end
return 1
"""

REFRESH = """
-- Extends every key that still holds its expected value.
-- KEYS: the keys (locks and liveness keys)
-- ARGV: expected value 1..n, then ttl ms 1..n
-- Returns: a list of 1 (extended) / 0 (gone or taken), one per key
local n = #KEYS
local result = {}
for i = 1, n do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('PEXPIRE', KEYS[i], ARGV[n + i])
    result[i] = 1
  else
    result[i] = 0
  end
end
return result
"""
