-- A webhook event is done with (delivered, or given up on): acknowledged and removed from
-- its outbox in one step, so that no acknowledged entry is left behind in the stream.
-- KEYS[1]  the outbox stream
-- ARGV     the consumer group, the entry id
-- Returns  1 when removed, 0 when it was already gone (a replay)
-- Time     none.
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
