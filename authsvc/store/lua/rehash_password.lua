-- Replace a password hash by one of the same password at the configured bcrypt cost.
-- KEYS[1]  the user hash
-- ARGV     the hash that was verified, its replacement
-- Returns  1 when replaced, 0 when the password changed meanwhile (nothing written)
-- Time     none. The password version stays: the password is the same.
if redis.call('HGET', KEYS[1], 'pw') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'pw', ARGV[2])
return 1
