-- Set (or clear) a user's own session limit, read by create_session.lua from the next login.
-- KEYS[1]  the user hash
-- ARGV     the limit, or '' to go back to the default
-- Returns  1, or 0 when there is no such user (nothing written)
-- Time     none.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if ARGV[1] == '' then
  redis.call('HDEL', KEYS[1], 'lim')
else
  redis.call('HSET', KEYS[1], 'lim', ARGV[1])
end
return 1
