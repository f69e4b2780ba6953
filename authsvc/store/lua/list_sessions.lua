-- List a user's live sessions, most recently used first, dropping dead index members.
-- KEYS[1]  the user's session index (sorted set); session hashes are KEYS[1] .. ':' .. id
-- ARGV     idle_ttl_ms, max_ttl_ms, shift_ms
-- Returns  {id, created_at_ms, last_used_at_ms, user_agent, ip, ...}
-- Time     Redis (now_ms).
-- Every session hash is read before the first write (see create_session.lua).
local idle_ttl, max_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local index = KEYS[1]
local now = now_ms(ARGV[3])

local out, dead = {}, {}
for _, member in ipairs(redis.call('ZREVRANGE', index, 0, -1)) do
  local f = redis.call('HMGET', index .. ':' .. member, 'c', 'u', 'ua', 'ip')
  if alive(f, now, idle_ttl, max_ttl) then
    out[#out + 1] = member
    out[#out + 1] = f[1]
    out[#out + 1] = f[2]
    out[#out + 1] = f[3]
    out[#out + 1] = f[4]
  else
    dead[#dead + 1] = member
  end
end
for _, member in ipairs(dead) do
  redis.call('ZREM', index, member)
  redis.call('DEL', index .. ':' .. member)
end
return out
