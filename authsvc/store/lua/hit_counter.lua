-- Count one event in a fixed window.
-- KEYS[1]  the window's counter (its name carries the window number)
-- ARGV     window_ms
-- Returns  the count after this event
-- Time     the caller's clock picks the window; the TTL only cleans up.
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
end
return count
