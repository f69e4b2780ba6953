-- End sessions of one user and announce each on the revocation channel.
-- KEYS[1]  the user's session index (sorted set); session hashes are KEYS[1] .. ':' .. id
-- ARGV     channel, target session id or '*' for all, session id to keep or ''
-- Returns  the ids of the sessions that ended (live ones only)
-- Idempotent: a replay finds nothing left to end.
local channel, target, keep = ARGV[1], ARGV[2], ARGV[3]
local index = KEYS[1]

local members
if target == '*' then
  members = redis.call('ZRANGE', index, 0, -1)
else
  members = {target}
end

local ended = {}
for _, member in ipairs(members) do
  if member ~= keep then
    local existed = redis.call('DEL', index .. ':' .. member)
    local indexed = redis.call('ZREM', index, member)
    if existed == 1 or indexed == 1 then
      redis.call('PUBLISH', channel, member)
      if existed == 1 then
        ended[#ended + 1] = member
      end
    end
  end
end
return ended
