-- Replace a password and end every other session of the user, in one step: a login that
-- verified the old password carries the old version and can no longer create a session.
-- KEYS[1]  the user hash (fields pw, pv: password version, pc: id of the call that set it)
-- KEYS[2]  the user's session index; session hashes are KEYS[2] .. ':' .. id
-- KEYS[3]  the user's tombstones
-- KEYS[4]  the outbox of this slot, only with webhooks on (see emit in _lib.lua)
-- ARGV     new password hash, password version the caller verified, session id to keep,
--          channel, user_id, call id (unique per request), shift_ms, doorbell channel
-- Returns  the ids of the sessions that ended, or false when the password changed since
--          it was verified (nothing written). A replay of the same call answers as the
--          first run did.
-- Time     Redis (now_ms), for the tombstones.
-- Every session hash is read before the first write (see create_session.lua).
local new_hash, version, keep, call = ARGV[1], ARGV[2], ARGV[3], ARGV[6]
local user, index = KEYS[1], KEYS[2]
local ctx = {index = index, ended = KEYS[3], now = now_ms(ARGV[7]), call = call,
             channel = ARGV[4], user = ARGV[5], outbox = KEYS[4], bell = ARGV[8]}

local state = redis.call('HMGET', user, 'pv', 'pc')
if state[1] ~= version then
  if state[2] == call and tonumber(state[1]) == tonumber(version) + 1 then
    return {}
  end
  return false
end

local others, meta = {}, {}
for _, member in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  local m = member ~= keep and session_meta(index, member)
  if m then
    others[#others + 1] = member
    meta[#others] = m
  end
end

redis.call('HSET', user, 'pw', new_hash, 'pv', tonumber(version) + 1, 'pc', call)
for i, member in ipairs(others) do
  end_session(ctx, member, 'password_changed', meta[i])
end
return others
