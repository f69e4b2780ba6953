-- One step of a throttle window, atomically: concurrent attempts each see the others, on
-- every instance.
-- KEYS[1]  the throttle's hash: n (attempts counted), p (of those, checks in flight),
--          t (window start, ms)
-- ARGV     limit, window_ms, op, shift_ms; op is one of
--            hit   count an attempt (login and signup attempts per address)
--            take  start a password check: counted now, before it runs, and in flight
--            pass  a check that did not fail (right password, or never ran): uncounted
--            fail  a check that failed: it stays counted
-- Returns  for hit and take: 0 when counted; the milliseconds until the window ends when
--          the limit is used up by failures; -1 (take only) when it is used up by checks
--          still in flight, which may yet pass: the caller waits and takes again.
--          0 for pass and fail.
-- Time     Redis (now_ms): the window starts with its first attempt and is the same on
--          every instance. The key's TTL only cleans up.
local limit, window, op = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local now = now_ms(ARGV[4])
local f = redis.call('HMGET', KEYS[1], 'n', 'p', 't')
local counted, pending, start = tonumber(f[1]) or 0, tonumber(f[2]) or 0, tonumber(f[3]) or now
if now >= start + window then
  counted, pending, start = 0, 0, now
end

if op == 'pass' or op == 'fail' then
  if pending > 0 then
    pending = pending - 1
    if op == 'pass' then
      counted = counted - 1
    end
    redis.call('HSET', KEYS[1], 'n', counted, 'p', pending)
  end
  return 0
end

if counted >= limit then
  if op == 'take' and counted - pending < limit then
    return -1
  end
  return start + window - now
end
if op == 'take' then
  pending = pending + 1
end
redis.call('HSET', KEYS[1], 'n', counted + 1, 'p', pending, 't', start)
redis.call('PEXPIRE', KEYS[1], start + window - now)
return 0
