-- cancel: remove a deferred message that has not been promoted yet.
-- KEYS[1] P:{dqN}:due  KEYS[2] P:{dqN}:mB (the id's bucket)
-- ARGV[1] message id
-- Returns 1 if it was pending, 0 otherwise.
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
