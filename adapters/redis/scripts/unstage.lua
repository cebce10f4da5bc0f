-- unstage: drop deferred messages from the sorted set once another delay queue holds them.
-- KEYS[1] P:ready (unused; scripts name one key)
-- ARGV[1] prefix  then groups of 3: id, shard, due ms as read
-- Only an entry still at the due time that was read is dropped: one re-deferred meanwhile
-- under the same id (Retry(delay=...)) stays.
-- Returns the number dropped.
local n = 0
for i = 2, #ARGV, 3 do
  local z = dkey(ARGV[1], ARGV[i + 1], 'due')
  if tonumber(redis.call('ZSCORE', z, ARGV[i])) == tonumber(ARGV[i + 2]) then
    redis.call('ZREM', z, ARGV[i])
    redis.call('HDEL', mkey(ARGV[1], ARGV[i + 1], ARGV[i]), ARGV[i])
    n = n + 1
  end
end
return n
