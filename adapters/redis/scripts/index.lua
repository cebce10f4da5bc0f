-- index: set how many reminders some actors of one partition have, in its index of actors
-- with reminders and its totals; for schedules armed again from state kept outside Redis
-- (recover --reminders), whose turns wrote the index into a Redis that lost it.
-- KEYS[1] P:reminders:n  KEYS[2] P:reminders:a, then the actors' index hashes (P:rix:<b>)
-- ARGV: pairs of actor, count (the actor's hash is the KEYS entry at 2 + its pair's index)
-- Returns the change of the partition's total.
local delta = 0
for i = 1, #ARGV, 2 do
  local key = KEYS[2 + (i + 1) / 2]
  local old = tonumber(redis.call('HGET', key, ARGV[i]) or '0')
  local n = tonumber(ARGV[i + 1])
  if n > 0 then
    redis.call('HSET', key, ARGV[i], n)
  else
    redis.call('HDEL', key, ARGV[i])
  end
  delta = delta + n - old
  if (old == 0) ~= (n == 0) then
    redis.call('INCRBY', KEYS[2], old == 0 and 1 or -1)
  end
end
if delta ~= 0 then
  redis.call('INCRBY', KEYS[1], delta)
end
return delta
