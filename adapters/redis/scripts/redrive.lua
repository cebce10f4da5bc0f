-- redrive: move one dead letter back into its actor's mailbox for another try.
-- KEYS[1] P:dlq where the record is  KEYS[2] P:{A}:mb (P: the actor's partition)
-- ARGV[1] prefix  ARGV[2] inline signals  ARGV[3] now ms  ARGV[4] the dead-letter record
-- (exact bytes)  ARGV[5] actor key  ARGV[6] message id  ARGV[7] entry  ARGV[8] partition
-- The id is forgotten by the actor's dedup set and attempt count, so it runs again, and its
-- failure reply goes, so that the reply of the next try is the one kept.
-- Returns {signals, 1 if the record was still in the list (and was moved), else 0}.
if redis.call('LREM', KEYS[1], 1, ARGV[4]) == 0 then
  return {'', 0}
end
local prefix, part, actor = ARGV[1], ARGV[8], ARGV[5]
redis.call('SREM', akey(prefix, part, actor, 'done'), ARGV[6])
redis.call('SREM', akey(prefix, part, actor, 'doneold'), ARGV[6])
redis.call('HDEL', akey(prefix, part, actor, 'att'), ARGV[6])
redis.call('DEL', pkey(prefix, part, 'reply:' .. ARGV[6]))
redis.call('RPUSH', KEYS[2], ARGV[7])
mark_ready(prefix, part, ARGV[3], actor)
return {finish_signals(prefix, ARGV[2]), 1}
