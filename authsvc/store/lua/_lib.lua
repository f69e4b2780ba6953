-- Shared by every script: scripts.py puts this text before each one.
-- Time: Redis's clock, never the caller's, so that instances whose clocks disagree still
-- agree on every window and lifetime. `shift` is 0 outside tests, which move time with it.
local function now_ms(shift)
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(shift)
end

-- Ended sessions leave a tombstone for a day: why, when, and the id of the call that ended
-- them, so that a replay of that call (a client retry after a lost reply) answers as the
-- first run did.
local TOMBSTONE_MS = 86400000

-- Revocation messages: '1 <session_id> <user_id> <reason>'. The leading version lets a
-- later format be told apart; a subscriber that meets a version it does not know drops
-- everything it cached, since it cannot tell what ended.
-- The index entry is what makes a session live (probe and rotate check it): during a slot
-- migration a script can run on the importing node, where the hash may not have arrived.
local function end_session(ctx, sid, reason)
  redis.call('DEL', ctx.index .. ':' .. sid)
  redis.call('ZREM', ctx.index, sid)
  redis.call('HSET', ctx.ended, sid, reason .. ' ' .. ctx.now .. ' ' .. ctx.call)
  redis.call('PEXPIRE', ctx.ended, TOMBSTONE_MS)
  if ctx.channel then
    redis.call('PUBLISH', ctx.channel, '1 ' .. sid .. ' ' .. ctx.user .. ' ' .. reason)
  end
end

-- The call id recorded in a session's tombstone, if it has one.
local function ended_by(ended, sid)
  local tomb = redis.call('HGET', ended, sid)
  if not tomb then
    return nil
  end
  return string.match(tomb, '^%S+ %S+ (%S*)$')
end

-- Why a session ended: its tombstone's reason, or '' when it has none (an authentic token
-- of a session without one outlived it: it expired, or ended more than a day ago).
local function why_ended(ended, sid)
  local tomb = redis.call('HGET', ended, sid)
  return tomb and string.match(tomb, '^(%S+)') or ''
end

local function alive(fields, now, idle_ttl, max_ttl)
  return fields[1] and now < tonumber(fields[2]) + idle_ttl
    and now < tonumber(fields[1]) + max_ttl
end
