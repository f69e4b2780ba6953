-- Is a session live? Used once per session and process to admit its access tokens.
-- KEYS[1]  the session hash
-- KEYS[2]  the user hash <prefix>:{u:<user_id>}:user
-- KEYS[3]  the user's session index
-- KEYS[4]  the user's tombstones
-- ARGV     idle_ttl_ms, max_ttl_ms, shift_ms, session_id
-- Returns  {1, email, created_at_ms, last_used_at_ms, generation, now_ms} when the session
--          is live, else {0, why it ended} (see why_ended in _lib.lua)
-- Time     Redis (now_ms). Read-only.
-- A session is live while its hash is and the index names it: the index is what every
-- ending removes first-hand, even where a hash outlives it (see _lib.lua, end_session).
local idle_ttl, max_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms(ARGV[3])
local f = redis.call('HMGET', KEYS[1], 'c', 'u', 'gen')
if not alive(f, now, idle_ttl, max_ttl) or not redis.call('ZSCORE', KEYS[3], ARGV[4]) then
  return {0, why_ended(KEYS[4], ARGV[4])}
end
return {1, redis.call('HGET', KEYS[2], 'email') or '', f[1], f[2], f[3], now}
