-- land: deliver deferred messages coming back from outside Redis (SQS, EventBridge Scheduler).
-- KEYS[1] P:ready
-- ARGV[1] prefix  ARGV[2] now ms  then groups of 5: target, id, due ms, shard, entry
-- A due message goes to its actor's mailbox, one not yet due to the sorted set with its exact
-- due time (never early), a cancelled one (tombstone) nowhere. Idempotent by id: a copy
-- delivered twice by SQS is dropped by the sorted set (ZADD NX) or by the actor's done set.
-- Returns {landed, cancelled}.
local landed, cancelled = 0, 0
local now = tonumber(ARGV[2])
for i = 3, #ARGV, 5 do
  local id = ARGV[i + 1]
  if redis.call('EXISTS', ARGV[1] .. ':tomb:' .. id) == 1 then
    cancelled = cancelled + 1
  else
    local due = ARGV[i + 2]
    if tonumber(due) <= now then
      due = ''
    end
    landed = landed + deliver(ARGV[1], KEYS[1], ARGV[2], ARGV[i], id, due, ARGV[i + 3], ARGV[i + 4])
  end
end
return {landed, cancelled}
