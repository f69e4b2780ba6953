-- Store a new session; first drop dead members, then, while the user is at the limit,
-- evict least recently used sessions (policy 'evict') or refuse the login ('deny'). Atomic:
-- N concurrent logins leave exactly the limit.
-- KEYS[1]  the user's session index, a sorted set of session ids scored by last_used_at
--          (<prefix>:{u:<user_id>}:s); session hashes are KEYS[1] .. ':' .. session_id and
--          share its hash tag, so they live in this script's slot
-- KEYS[2]  the new session's hash (KEYS[1] .. ':' .. ARGV[1])
-- KEYS[3]  the user hash <prefix>:{u:<user_id>}:user (field 'lim': the user's own limit)
-- KEYS[4]  the user's tombstones <prefix>:{u:<user_id>}:ended
-- KEYS[5]  the outbox of this slot, only with webhooks on (see emit in _lib.lua)
-- ARGV     session_id, idle_ttl_ms, max_ttl_ms, default limit, channel, user_id,
--          user_agent, ip, password version the login verified, shift_ms, policy,
--          doorbell channel ('' with webhooks off)
-- Returns  {1, created_at_ms, evicted ids...}  created (or found by a replay)
--          {0}                               the password changed since it was verified,
--                                            or the account is gone: nothing written
--          {2}                               at the limit under 'deny': nothing written
-- Time     Redis (now_ms); Redis TTLs only clean up.
-- Every key is read before the first write, so a slot migration that moved some of them
-- stops the script before it has changed anything (the caller retries).
local sid = ARGV[1]
local idle_ttl, max_ttl, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local user_agent, ip, version = ARGV[7], ARGV[8], ARGV[9]
local index, session, user, ended = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = now_ms(ARGV[10])

local created = redis.call('HGET', session, 'c')
if created then
  return {1, tonumber(created)}
end
if redis.call('HEXISTS', ended, sid) == 1 then
  return {1, now}
end
local account = redis.call('HMGET', user, 'pv', 'lim')
if account[1] ~= version then
  return {0}
end
limit = tonumber(account[2]) or limit

local live, meta, dead = {}, {}, {}
for _, member in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  local f = redis.call('HMGET', index .. ':' .. member, 'c', 'u', 'ua', 'ip')
  if alive(f, now, idle_ttl, max_ttl) then
    live[#live + 1] = member
    meta[#meta + 1] = {f[3], f[4]}
  else
    dead[#dead + 1] = member
  end
end

if ARGV[11] == 'deny' and #live >= limit then
  return {2}
end
for _, member in ipairs(dead) do
  redis.call('ZREM', index, member)
  redis.call('DEL', index .. ':' .. member)
end
local ctx = {index = index, ended = ended, now = now, call = '', channel = ARGV[5],
             user = ARGV[6], outbox = KEYS[5], bell = ARGV[12]}
local reply = {1, now}
local i = 1
while #live - i + 1 >= limit do
  end_session(ctx, live[i], 'evicted', meta[i])
  reply[#reply + 1] = live[i]
  i = i + 1
end

redis.call('HSET', session, 'gen', 0, 'c', now, 'u', now, 'ua', user_agent, 'ip', ip)
redis.call('PEXPIRE', session, idle_ttl)
redis.call('ZADD', index, now, sid)
if redis.call('PTTL', index) < idle_ttl then
  redis.call('PEXPIRE', index, idle_ttl)
end
emit(ctx, 'session.created', session_data(ctx, sid, {user_agent, ip}))
return reply
