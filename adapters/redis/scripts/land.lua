-- land: deliver deferred messages coming back from outside Redis (SQS, EventBridge Scheduler).
-- KEYS[1] P:ready
-- ARGV[1] prefix  ARGV[2] now ms  ARGV[3] how long a landed id is remembered, ms
-- then groups of 5: target, id, due ms, shard, entry
-- A due message goes to its actor's mailbox, one not yet due to the sorted set with its exact
-- due time (never early), a cancelled one nowhere. Idempotent by id and due time: a second
-- copy from SQS's at-least-once delivery is dropped here (or by the actor's done set), while
-- a message re-deferred under the same id by Retry(delay=...) has another due time. A message
-- landed in the sorted set that goes out again (unstage.lua) loses its tombstone, so that it
-- lands when it comes back.
-- Returns {delivered to mailboxes, put in the sorted set, dropped}.
local delivered, waiting, dropped = 0, 0, 0
local now = tonumber(ARGV[2])
for i = 4, #ARGV, 5 do
  local id, due = ARGV[i + 1], ARGV[i + 2]
  local tomb = ARGV[1] .. ':tomb:' .. id
  local seen = redis.call('GET', tomb)
  if seen == 'c' or seen == 'l:' .. due then
    dropped = dropped + 1
  else
    if tonumber(due) <= now then
      delivered = delivered + deliver(ARGV[1], KEYS[1], timely(due), ARGV[i], id, '', 0,
                                     ARGV[i + 4])
    else
      deliver(ARGV[1], KEYS[1], ARGV[2], ARGV[i], id, due, ARGV[i + 3], ARGV[i + 4])
      waiting = waiting + 1
    end
    redis.call('SET', tomb, 'l:' .. due, 'PX', ARGV[3])
  end
end
return {delivered, waiting, dropped}
