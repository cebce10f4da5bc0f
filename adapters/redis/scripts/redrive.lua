-- redrive: move one dead letter back into its actor's mailbox for another try.
-- KEYS[1] P:dlq  KEYS[2] P:ready
-- ARGV[1] prefix  ARGV[2] now ms  ARGV[3] the dead-letter record (exact bytes)
-- ARGV[4] actor key  ARGV[5] message id  ARGV[6] entry
-- The id is forgotten by the actor's dedup set and attempt count, so it runs again, and its
-- failure reply goes, so that the reply of the next try is the one kept.
-- Returns 1 if the record was still in the list (and was moved), 0 otherwise.
if redis.call('LREM', KEYS[1], 1, ARGV[3]) == 0 then
  return 0
end
redis.call('ZREM', akey(ARGV[1], ARGV[4], 'done'), ARGV[5])
redis.call('HDEL', akey(ARGV[1], ARGV[4], 'att'), ARGV[5])
redis.call('DEL', ARGV[1] .. ':reply:' .. ARGV[5])
redis.call('RPUSH', akey(ARGV[1], ARGV[4], 'mb'), ARGV[6])
mark_ready(ARGV[1], KEYS[2], ARGV[2], ARGV[4])
return 1
