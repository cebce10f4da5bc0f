-- flushed: an outbox has been delivered up to a record: drop it and those before it.
-- KEYS[1] P:{A}:outbox  KEYS[2] P:outboxes
-- ARGV[1] actor key  ARGV[2] the last record delivered
-- Safe to run twice, and after another deliverer (the next holder, a poller) took over:
-- records appended since stay, and the actor leaves P:outboxes only once its outbox is empty.
-- Returns how many records are left.
local at = redis.call('LPOS', KEYS[1], ARGV[2])
if at then
  redis.call('LTRIM', KEYS[1], at + 1, -1)
end
local left = redis.call('LLEN', KEYS[1])
if left == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return left
