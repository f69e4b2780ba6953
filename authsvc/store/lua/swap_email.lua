-- Compare and set an email's claim: it names `expected` and now names `new` (or nobody).
-- KEYS[1]  the email's user id <prefix>:{e:<email digest>}:uid
-- KEYS[2]  the outbox of this slot, only with webhooks on (see emit in _lib.lua)
-- ARGV     expected user id, new user id or '' to release the email, the email, doorbell
--          channel ('' with webhooks off), shift_ms
-- Returns  1 when swapped (or found swapped: a replay of this call), 0 when the email named
--          someone else (nothing written)
-- Time     Redis (now_ms), for the event.
-- A new owner is a new account (one whose claim was left behind by a deletion that stopped
-- half-way is taken over): it gets its user.created event here.
local current = redis.call('GET', KEYS[1])
if current == (ARGV[2] ~= '' and ARGV[2] or false) then
  return 1
end
if current ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2])
  local ctx = {now = now_ms(ARGV[5]), outbox = KEYS[2], bell = ARGV[4]}
  emit(ctx, 'user.created', {user_id = ARGV[2], email = ARGV[3]})
end
return 1
