-- cancel: remove a deferred message that has not been promoted yet.
-- KEYS[1] P:{dqN}:due  KEYS[2] P:{dqN}:mB (the id's bucket)  KEYS[3] its bucket by the rule
-- before ids carried their target (a message deferred before an upgrade)
-- ARGV[1] message id  ARGV[2] tombstone lifetime ms (0: none)  ARGV[3] prefix
-- ARGV[4] how long a cancel's receipt is kept (P:cancelled:<id>), so that a cancel retried
--   after its answer was lost still says the message was cancelled
-- Returns {1 if it was pending in Redis (or a cancel took it out before, within the
-- receipt's lifetime), 1 if it may be pending elsewhere: neither cancelled nor landed before}.
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
local receipt = ARGV[3] .. ':cancelled:' .. ARGV[1]
if removed == 1 then
  redis.call('SET', receipt, 1, 'PX', ARGV[4])
elseif redis.call('EXISTS', receipt) == 1 then
  removed = 1
end
local unknown = 0
if tonumber(ARGV[2]) > 0 then
  local before = tombstone(ARGV[3], ARGV[1], ARGV[2])
  if not before then
    unknown = 1
  elseif before == 'c' then
    removed = 1  -- cancelled before (held outside Redis): the same answer again
  end
end
return {removed, unknown}
