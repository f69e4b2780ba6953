-- End sessions of one user, leave their tombstones and announce each on the channel.
-- KEYS[1]  the user's session index (sorted set); session hashes are KEYS[1] .. ':' .. id
-- KEYS[2]  the user's tombstones
-- KEYS[3]  the outbox of this slot, only with webhooks on (see emit in _lib.lua)
-- ARGV     channel, target session id or '*' for all, session id to keep or '', reason,
--          user_id, call id (unique per request), shift_ms, doorbell channel
-- Returns  the ids of the sessions that ended (live ones only). A replay of the same call
--          (same call id) answers as the first run did.
-- Time     Redis (now_ms), for the tombstones.
-- Every session hash is read before the first write (see create_session.lua).
local channel, target, keep, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local index, ended, call = KEYS[1], KEYS[2], ARGV[6]
local ctx = {index = index, ended = ended, now = now_ms(ARGV[7]), call = call,
             channel = channel, user = ARGV[5], outbox = KEYS[3], bell = ARGV[8]}

local members
if target == '*' then
  members = redis.call('ZRANGE', index, 0, -1)
else
  members = {target}
end

local found, live = {}, {}
for _, member in ipairs(members) do
  if member ~= keep then
    local meta = session_meta(index, member)
    if meta or redis.call('ZSCORE', index, member) then
      found[#found + 1] = member
      live[#found] = meta
    end
  end
end

if target ~= '*' and #found == 0 and call ~= '' and ended_by(ended, target) == call then
  return {target}
end

local reply = {}
for i, member in ipairs(found) do
  end_session(ctx, member, reason, live[i])
  if live[i] then
    reply[#reply + 1] = member
  end
end
return reply
