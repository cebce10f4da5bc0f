-- unstage: drop deferred messages from the sorted set once another delay queue holds them.
-- KEYS[1] P:ready (unused; scripts name one key)
-- ARGV[1] prefix  then groups of 3: id, shard, due ms as read
-- Only an entry still at the due time that was read is dropped: one re-deferred meanwhile
-- under the same id (Retry(delay=...)) stays. A landed tombstone P:tomb:<id> = 'l:<due>' of
-- that due time goes too: the message landed in the sorted set without reaching a mailbox
-- (its hop was refused) and is out again, so it must land when it comes back. Copies of it
-- still in flight are dropped by the tombstone its next landing writes, or by the done set.
-- Returns the number dropped.
local n = 0
for i = 2, #ARGV, 3 do
  local id, due = ARGV[i], ARGV[i + 2]
  local z = dkey(ARGV[1], ARGV[i + 1], 'due')
  if tonumber(redis.call('ZSCORE', z, id)) == tonumber(due) then
    redis.call('ZREM', z, id)
    take_body(ARGV[1], ARGV[i + 1], id)
    local tomb = ARGV[1] .. ':tomb:' .. id
    if redis.call('GET', tomb) == 'l:' .. due then
      redis.call('DEL', tomb)
    end
    n = n + 1
  end
end
return n
