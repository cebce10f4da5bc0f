-- index: set how many reminders some actors of one partition have, in its index of actors
-- with reminders and its total; for schedules armed again from state kept outside Redis
-- (recover --reminders), whose turns wrote the index into a Redis that lost it.
-- KEYS[1] P:reminders  KEYS[2] P:reminders:n  ARGV: pairs of actor, count
-- Returns the change of the partition's total.
local delta = 0
for i = 1, #ARGV, 2 do
  local old = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]) or '0')
  local n = tonumber(ARGV[i + 1])
  if n > 0 then
    redis.call('ZADD', KEYS[1], n, ARGV[i])
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
  delta = delta + n - old
end
if delta ~= 0 then
  redis.call('INCRBY', KEYS[2], delta)
end
return delta
