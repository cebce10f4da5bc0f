-- cancel: remove a deferred message that has not been promoted yet.
-- KEYS[1] P:{dqN}:due  KEYS[2] P:{dqN}:mB (the id's bucket)  KEYS[3] its bucket by the rule
-- before ids carried their target (a message deferred before an upgrade)
-- ARGV[1] message id  ARGV[2] tombstone lifetime ms (0: none)  ARGV[3] prefix
-- Returns {1 if it was pending in Redis, 1 if it may be pending elsewhere: neither cancelled
-- nor landed before}.
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
local unknown = 0
if tonumber(ARGV[2]) > 0 and not tombstone(ARGV[3], ARGV[1], ARGV[2]) then
  unknown = 1
end
return {removed, unknown}
