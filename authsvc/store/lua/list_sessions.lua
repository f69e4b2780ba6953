-- List a user's live sessions, most recently used first, dropping dead index members.
-- KEYS[1]  the user's session index (sorted set); session hashes are KEYS[1] .. ':' .. id
-- ARGV     now_ms, idle_ttl_ms, max_ttl_ms
-- Returns  a flat list: id, created_at_ms, last_used_at_ms, user_agent, ip, repeated
-- Time     the caller's clock (ARGV[1]).
local now, idle_ttl, max_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local index = KEYS[1]

local out = {}
for _, member in ipairs(redis.call('ZREVRANGE', index, 0, -1)) do
  local key = index .. ':' .. member
  local f = redis.call('HMGET', key, 'c', 'u', 'ua', 'ip')
  if f[1] and now < tonumber(f[2]) + idle_ttl and now < tonumber(f[1]) + max_ttl then
    out[#out + 1] = member
    out[#out + 1] = f[1]
    out[#out + 1] = f[2]
    out[#out + 1] = f[3]
    out[#out + 1] = f[4]
  else
    redis.call('ZREM', index, member)
    redis.call('DEL', key)
  end
end
return out
