-- Delete an account's user hash and end every session of it, leaving their tombstones.
-- KEYS[1]  the user hash
-- KEYS[2]  the user's session index; session hashes are KEYS[2] .. ':' .. id
-- KEYS[3]  the user's tombstones (kept: why the sessions ended, for a day)
-- KEYS[4]  the outbox of this slot, only with webhooks on (see emit in _lib.lua)
-- ARGV     channel, user_id, call id, shift_ms, doorbell channel
-- Returns  the ids of the sessions that ended; a replay finds nothing left and ends nothing.
-- Time     Redis (now_ms), for the tombstones.
-- Every session hash is read before the first write (see create_session.lua). The email's
-- claim lives in another slot: the caller releases it afterwards (swap_email.lua).
local user, index = KEYS[1], KEYS[2]
local ctx = {index = index, ended = KEYS[3], now = now_ms(ARGV[4]), call = ARGV[3],
             channel = ARGV[1], user = ARGV[2], outbox = KEYS[4], bell = ARGV[5]}

local email = redis.call('HGET', user, 'email')
local live, meta = {}, {}
for _, member in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  local m = session_meta(index, member)
  if m then
    live[#live + 1] = member
    meta[#live] = m
  end
end

for i, member in ipairs(live) do
  end_session(ctx, member, 'account_deleted', meta[i])
end
redis.call('DEL', user, index)
if email then
  emit(ctx, 'user.deleted', {user_id = ctx.user, email = email})
end
return live
