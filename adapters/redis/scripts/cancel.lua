-- cancel: remove a deferred message that has not been promoted yet.
-- KEYS[1] P:due  KEYS[2] P:mB (the id's bucket)  KEYS[3] P:cancelled:<id>  KEYS[4] P:tomb:<id>
-- (P: the partition of the message's target, which its id names)
-- ARGV[1] message id  ARGV[2] tombstone lifetime ms (0: none)  ARGV[3] how long a cancel's
--   receipt is kept, so that a cancel retried after its answer was lost still says the
--   message was cancelled (0: none; an outbox's cancels, which nobody waits on)
-- Returns {1 if it was pending in Redis (or a cancel took it out before, within the
-- receipt's lifetime), 1 if it may be pending elsewhere: neither cancelled nor landed before}.
redis.call('HDEL', KEYS[2], ARGV[1])
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
  if tonumber(ARGV[3]) > 0 then
    redis.call('SET', KEYS[3], 1, 'PX', ARGV[3])
  end
elseif redis.call('EXISTS', KEYS[3]) == 1 then
  removed = 1
end
local unknown = 0
if tonumber(ARGV[2]) > 0 then
  local before = redis.call('SET', KEYS[4], 'c', 'PX', ARGV[2], 'GET')
  if not before then
    unknown = 1
  elseif before == 'c' then
    removed = 1  -- cancelled before (held outside Redis): the same answer again
  end
end
return {removed, unknown}
