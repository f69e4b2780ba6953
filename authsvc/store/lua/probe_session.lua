-- Is a session live? Used once per session and process to admit its access tokens.
-- KEYS[1]  the session hash
-- KEYS[2]  the user hash <prefix>:{u:<user_id>}:user
-- ARGV     now_ms, idle_ttl_ms, max_ttl_ms
-- Returns  the user's email when the session is live, false otherwise
-- Time     the caller's clock (ARGV[1]). Read-only.
local now, idle_ttl, max_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local f = redis.call('HMGET', KEYS[1], 'c', 'u')
if not f[1] or now >= tonumber(f[2]) + idle_ttl or now >= tonumber(f[1]) + max_ttl then
  return false
end
return redis.call('HGET', KEYS[2], 'email')
