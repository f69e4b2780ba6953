-- Create an account unless its email is taken.
-- KEYS[1]  account hash  <prefix>:{e:<email digest>}:account
-- ARGV     user_id, email, password_hash, created_at_ms
-- Returns  the account's user_id: ARGV[1] when created (or when a retry of this call
--          finds its own earlier write), another id when the email was already taken.
-- Time     the caller's clock (ARGV[4]).
local user_id, email, password_hash, created_at = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local existing = redis.call('HGET', KEYS[1], 'uid')
if existing then
  return existing
end
redis.call('HSET', KEYS[1], 'uid', user_id, 'email', email, 'pw', password_hash, 'c', created_at)
return user_id
