-- land: deliver deferred messages coming back from outside Redis (SQS, EventBridge Scheduler)
-- into one partition.
-- KEYS[1] P:ready of the partition
-- ARGV[1] prefix  ARGV[2] inline signals  ARGV[3] now ms  ARGV[4] how long a landed id is
--   remembered, ms
-- then groups of 5: target, partition, id, due ms, entry
-- A due message goes to its actor's mailbox, one not yet due to the sorted set with its exact
-- due time (never early), a cancelled one nowhere. Idempotent by id and due time: a second
-- copy from SQS's at-least-once delivery is dropped here (or by the actor's done set), while
-- a message re-deferred under the same id by Retry(delay=...) has another due time. A message
-- landed in the sorted set that goes out again (unstage.lua) loses its tombstone, so that it
-- lands when it comes back.
-- Returns {signals, delivered to mailboxes, put in the sorted set, dropped}.
local delivered, waiting, dropped = 0, 0, 0
local now = tonumber(ARGV[3])
for i = 5, #ARGV, 5 do
  local target, part, id, due = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local tomb = pkey(ARGV[1], part, 'tomb:' .. id)
  local seen = redis.call('GET', tomb)
  if seen == 'c' or seen == 'l:' .. due then
    dropped = dropped + 1
  else
    if tonumber(due) <= now then
      delivered = delivered + deliver(ARGV[1], timely(due), target, part, id, '', ARGV[i + 4])
    else
      deliver(ARGV[1], now, target, part, id, due, ARGV[i + 4])
      waiting = waiting + 1
    end
    redis.call('SET', tomb, 'l:' .. due, 'PX', ARGV[4])
  end
end
return {finish_signals(ARGV[1], ARGV[2]), delivered, waiting, dropped}
