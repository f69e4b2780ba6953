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

-- Webhook events (see authsvc/webhooks): appended to the outbox stream of the script's own
-- slot in the same script as the change they report, so that no change happens without its
-- event. `ctx.bell` is the doorbell channel that wakes the delivery workers, '' (or nil)
-- with webhooks off: then nothing is queued. The stream is declared in KEYS, so a slot
-- migration refuses the script before it starts rather than in the middle.
local function emit(ctx, kind, data)
  if not ctx.bell or ctx.bell == '' then
    return
  end
  redis.call('XADD', ctx.outbox, '*', 't', kind, 'ms', ctx.now, 'd', cjson.encode(data))
  redis.call('PUBLISH', ctx.bell, ctx.outbox)
end

-- What a webhook event says of a session: `meta` is its hash's {ua, ip}, read by the
-- caller before its first write.
local function session_data(ctx, sid, meta)
  return {user_id = ctx.user, session_id = sid, user_agent = meta[1] or '', ip = meta[2] or ''}
end

-- Revocation messages: '1 <session_id> <user_id> <reason>'. The leading version lets a
-- later format be told apart; a subscriber that meets a version it does not know drops
-- everything it cached, since it cannot tell what ended.
-- The index entry is what makes a session live (probe and rotate check it): during a slot
-- migration a script can run on the importing node, where the hash may not have arrived.
-- `meta` is the session hash's {ua, ip} (HMGET before the first write), or nil for a
-- session whose hash had already gone: it had expired, and gets no session.ended event.
local function end_session(ctx, sid, reason, meta)
  redis.call('DEL', ctx.index .. ':' .. sid)
  redis.call('ZREM', ctx.index, sid)
  redis.call('HSET', ctx.ended, sid, reason .. ' ' .. ctx.now .. ' ' .. ctx.call)
  redis.call('PEXPIRE', ctx.ended, TOMBSTONE_MS)
  if ctx.channel then
    redis.call('PUBLISH', ctx.channel, '1 ' .. sid .. ' ' .. ctx.user .. ' ' .. reason)
  end
  if meta then
    local data = session_data(ctx, sid, meta)
    data.reason = reason
    emit(ctx, 'session.ended', data)
  end
end

-- A session hash's {ua, ip} for end_session, or nil when the hash is gone.
local function session_meta(index, sid)
  local meta = redis.call('HMGET', index .. ':' .. sid, 'ua', 'ip')
  if not meta[1] and not meta[2] then
    return nil
  end
  return meta
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
