-- Compare and set an email's claim: it names `expected` and now names `new` (or nobody).
-- KEYS[1]  the email's user id <prefix>:{e:<email digest>}:uid
-- ARGV     expected user id, new user id or '' to release the email
-- Returns  1 when swapped, 0 when the email named someone else (nothing written)
-- Time     none. A replay finds the new value and answers 0, which callers treat as done.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
