-- Store a new session; first drop dead members, then evict least recently used sessions
-- while the user is at the limit. Count-and-evict is atomic: N concurrent logins leave
-- exactly `limit` sessions.
-- KEYS[1]  the user's session index, a sorted set of session ids scored by last_used_at
--          (<prefix>:{u:<user_id>}:s); session hashes are KEYS[1] .. ':' .. session_id and
--          share its hash tag, so they live in this script's slot (see docs/design.md)
-- KEYS[2]  the new session's hash (KEYS[1] .. ':' .. ARGV[1])
-- KEYS[3]  the user hash <prefix>:{u:<user_id>}:user
-- ARGV     session_id, now_ms, idle_ttl_ms, max_ttl_ms, limit, channel, email,
--          user_agent, ip
-- The hash holds no user id: it is the hash tag of every key name here.
-- Returns  the evicted session ids (an empty table when none)
-- Time     the caller's clock (ARGV[2]); Redis TTLs only clean up.
-- A replay (client retry after a lost reply) finds KEYS[2] and changes nothing.
local sid = ARGV[1]
local now, idle_ttl, max_ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local limit, channel = tonumber(ARGV[5]), ARGV[6]
local email, user_agent, ip = ARGV[7], ARGV[8], ARGV[9]
local index, session = KEYS[1], KEYS[2]

if redis.call('EXISTS', session) == 1 then
  return {}
end

local function alive(key)
  local fields = redis.call('HMGET', key, 'c', 'u')
  if not fields[1] then
    return false
  end
  return now < tonumber(fields[2]) + idle_ttl and now < tonumber(fields[1]) + max_ttl
end

for _, member in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  local key = index .. ':' .. member
  if not alive(key) then
    redis.call('ZREM', index, member)
    redis.call('DEL', key)
  end
end

local evicted = {}
while redis.call('ZCARD', index) >= limit do
  local victim = redis.call('ZPOPMIN', index)[1]
  redis.call('DEL', index .. ':' .. victim)
  redis.call('PUBLISH', channel, victim)
  evicted[#evicted + 1] = victim
end

redis.call('HSET', session, 'gen', 0, 'c', now, 'u', now, 'ua', user_agent, 'ip', ip)
redis.call('PEXPIRE', session, idle_ttl)
redis.call('ZADD', index, now, sid)
if redis.call('PTTL', index) < idle_ttl then
  redis.call('PEXPIRE', index, idle_ttl)
end
redis.call('HSETNX', KEYS[3], 'email', email)
return evicted
