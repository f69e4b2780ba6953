-- Rotate a session's refresh token: generation g becomes g + 1.
-- KEYS[1]  the user's session index (sorted set by last_used_at)
-- KEYS[2]  the session hash (KEYS[1] .. ':' .. session_id)
-- KEYS[3]  the user's tombstones
-- KEYS[4]  the outbox of this slot, only with webhooks on (see emit in _lib.lua)
-- ARGV     session_id, generation presented, idle_ttl_ms, max_ttl_ms, grace_ms, channel,
--          user_id, shift_ms, call id (unique per request; the hash keeps the last one as 'r'),
--          doorbell channel ('' with webhooks off), the request's user agent and ip (for
--          the session.reuse_detected event)
-- Returns  {1, generation to issue, created_at_ms, last_used_at_ms, now_ms}  rotated, or
--                                                     within the grace window
--          {0, why it ended}                          no such live session (see
--                                                     why_ended in _lib.lua)
--          {2}                                        reuse: the session is now revoked
-- Time     Redis (now_ms), so the grace window and lifetimes are the same on every instance.
-- The current generation g rotates. g - 1 within `grace` of that rotation answers with the
-- same successor g (parallel tabs, a lost response); so does a replay of this very call by a
-- client retry, whatever the grace window (even 0). Anything older, or g - 1 after the grace
-- window, is token reuse. A generation ahead of the stored one is the current one (see
-- below: a rotation lost in a failover).
-- Only login and rotation set last_used_at ('u'), so it is also the time of the last
-- rotation that the grace window counts from; a repeat within the grace window is the
-- same refresh again and changes nothing.
local sid, presented = ARGV[1], tonumber(ARGV[2])
local idle_ttl, max_ttl, grace = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local index, session = KEYS[1], KEYS[2]
local now = now_ms(ARGV[8])
local ctx = {index = index, ended = KEYS[3], now = now, call = '', channel = ARGV[6],
             user = ARGV[7], outbox = KEYS[4], bell = ARGV[10]}

local fields = redis.call('HMGET', session, 'gen', 'c', 'u', 'r', 'ua', 'ip')
if not fields[1] or not redis.call('ZSCORE', index, sid) then  -- see probe_session.lua
  return {0, why_ended(ctx.ended, sid)}
end
local current, created, last_used = tonumber(fields[1]), tonumber(fields[2]), tonumber(fields[3])
local meta = {fields[5], fields[6]}
-- A generation ahead of the stored one was issued by a rotation this Redis no longer has
-- (lost in a failover: rotations are not waited for). The token is authentic, so it is the
-- session's current one.
if presented > current then
  current = presented
end

if now >= last_used + idle_ttl or now >= created + max_ttl then
  ctx.channel = nil  -- no token of it outlives its expiry: nobody needs telling
  end_session(ctx, sid, 'expired', meta)
  return {0, 'expired'}
end

if presented == current - 1 and (now - last_used <= grace or fields[4] == ARGV[9]) then
  return {1, current, created, last_used, now}
end
if presented ~= current then
  emit(ctx, 'session.reuse_detected', session_data(ctx, sid, {ARGV[11], ARGV[12]}))
  end_session(ctx, sid, 'reuse_detected', meta)
  return {2}
end

local next_generation = current + 1
redis.call('HSET', session, 'gen', next_generation, 'u', now, 'r', ARGV[9])
local ttl = math.min(idle_ttl, created + max_ttl - now)
redis.call('PEXPIRE', session, ttl)
redis.call('ZADD', index, now, sid)
if redis.call('PTTL', index) < ttl then
  redis.call('PEXPIRE', index, ttl)
end
return {1, next_generation, created, now, now}
