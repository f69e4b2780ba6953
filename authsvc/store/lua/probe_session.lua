-- Is a session live? Used once per session and process to admit its access tokens.
-- KEYS[1]  the session hash
-- KEYS[2]  the user hash <prefix>:{u:<user_id>}:user
-- KEYS[3]  the user's session index
-- ARGV     idle_ttl_ms, max_ttl_ms, shift_ms, session_id
-- Returns  the user's email when the session is live, false otherwise
-- Time     Redis (now_ms). Read-only.
-- A session is live while its hash is and the index names it: the index is what every
-- ending removes first-hand, even where a hash outlives it (see _lib.lua, end_session).
local idle_ttl, max_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
if not alive(redis.call('HMGET', KEYS[1], 'c', 'u'), now_ms(ARGV[3]), idle_ttl, max_ttl)
    or not redis.call('ZSCORE', KEYS[3], ARGV[4]) then
  return false
end
return redis.call('HGET', KEYS[2], 'email')
