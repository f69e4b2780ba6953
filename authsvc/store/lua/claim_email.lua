-- Claim an email for a new account, and queue its user.created event in the same step.
-- KEYS[1]  the email's user id <prefix>:{e:<email digest>}:uid
-- KEYS[2]  the outbox of this slot, only with webhooks on (see emit in _lib.lua)
-- ARGV     user id, email, doorbell channel ('' with webhooks off), shift_ms
-- Returns  false when claimed now, else the user id the email already names (the caller's
--          own for a replay of this call, which queues nothing again)
-- Time     Redis (now_ms), for the event.
local owner = redis.call('GET', KEYS[1])
if owner then
  return owner
end
redis.call('SET', KEYS[1], ARGV[1])
local ctx = {now = now_ms(ARGV[4]), outbox = KEYS[2], bell = ARGV[3]}
emit(ctx, 'user.created', {user_id = ARGV[1], email = ARGV[2]})
return false
