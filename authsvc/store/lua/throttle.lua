-- One step of a throttle window, atomically: concurrent attempts each see the others, on
-- every instance.
-- KEYS[1]  the throttle's hash: n (attempts counted), p (of those, checks in flight),
--          t (window start, ms), and 'k' .. id for each check in flight
-- ARGV     limit, window_ms, op, shift_ms, check id (take, pass, fail); op is one of
--            hit   count an attempt (login and signup attempts per address)
--            take  start a password check: counted now, before it runs, and in flight
--            pass  a check that did not fail (right password, or never ran): uncounted
--            fail  a check that failed: it stays counted
--            peek  count nothing: is the limit used up?
-- Returns  for hit and take: 0 when counted (peek: when there is room); the milliseconds until the window ends when
--          the limit is used up by failures; -1 (take only) when it is used up by checks
--          still in flight, which may yet pass: the caller waits and takes again.
--          0 for pass and fail.
-- Time     Redis (now_ms): the window starts with its first attempt and is the same on
--          every instance. The key's TTL only cleans up.
-- Replays: a check is settled once, by its own id, and only in the window that took it (a
-- new window starts with a new hash); a replayed take finds its id and counts nothing.
-- A replayed hit counts twice, which only errs towards throttling.
local key, limit, window, op = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local now = now_ms(ARGV[4])
local check = 'k' .. (ARGV[5] or '')

if op == 'pass' or op == 'fail' then
  if redis.call('HDEL', key, check) == 1 then
    local pending = redis.call('HINCRBY', key, 'p', -1)
    if op == 'pass' and redis.call('HINCRBY', key, 'n', -1) <= 0 and pending <= 0 then
      -- Nothing counted, nothing in flight: nothing to remember (a successful login
      -- leaves no key behind for the rest of the window).
      redis.call('DEL', key)
    end
  end
  return 0
end

local f = redis.call('HMGET', key, 'n', 'p', 't')
local counted, pending, start = tonumber(f[1]) or 0, tonumber(f[2]) or 0, tonumber(f[3]) or now
if now >= start + window then
  redis.call('DEL', key)
  counted, pending, start = 0, 0, now
elseif op == 'take' and redis.call('HEXISTS', key, check) == 1 then
  return 0
end

if counted >= limit then
  if op == 'take' and counted - pending < limit then
    return -1
  end
  return start + window - now
end
if op == 'peek' then
  return 0
end
if op == 'take' then
  redis.call('HSET', key, 'n', counted + 1, 'p', pending + 1, 't', start, check, 1)
else
  redis.call('HSET', key, 'n', counted + 1, 't', start)
end
redis.call('PEXPIRE', key, start + window - now)
return 0
