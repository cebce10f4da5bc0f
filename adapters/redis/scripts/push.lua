-- push: deliver messages sent from outside a turn.
-- KEYS[1] P:ready  KEYS[2] P:awake
-- ARGV[1] prefix  ARGV[2] now ms  ARGV[3] wake ms (0: the sender starts no drain)
-- then groups of 5: target, id, due ms or '', shard, entry
-- Returns {messages accepted (ids already processed are dropped), 1 if the sender must start
-- a drain}: actors are ready and no drain is running or on its way (P:awake), which is then
-- taken for the wake ms, so that a burst of sends starts one drain.
local n = 0
for i = 4, #ARGV, 5 do
  n = n + deliver(ARGV[1], KEYS[1], ARGV[2], ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
                  ARGV[i + 4])
end
local wake = 0
if tonumber(ARGV[3]) > 0 and redis.call('ZCARD', KEYS[1]) > 0
    and redis.call('SET', KEYS[2], 1, 'NX', 'PX', ARGV[3]) then
  wake = 1
end
return {n, wake}
