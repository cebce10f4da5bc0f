-- push: deliver messages sent from outside a turn.
-- KEYS[1] P:ready
-- ARGV[1] prefix  ARGV[2] now ms  then groups of 5: target, id, due ms or '', shard, entry
-- Returns the number of messages accepted (ids already processed are dropped).
local n = 0
for i = 3, #ARGV, 5 do
  n = n + deliver(ARGV[1], KEYS[1], ARGV[2], ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
                  ARGV[i + 4])
end
return n
