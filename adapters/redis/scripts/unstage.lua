-- unstage: drop deferred messages of one partition from its sorted set once another delay
-- queue holds them.
-- KEYS[1] P:due of the partition
-- ARGV[1] prefix  ARGV[2] partition  then pairs: id, due ms as read
-- Only an entry still at the due time that was read is dropped: one re-deferred meanwhile
-- under the same id (Retry(delay=...)) stays. A landed tombstone P:tomb:<id> = 'l:<due>' of
-- that due time goes too: the message landed in the sorted set without reaching a mailbox
-- (its hop was refused) and is out again, so it must land when it comes back. Copies of it
-- still in flight are dropped by the tombstone its next landing writes, or by the done set.
-- Returns the number dropped.
local n = 0
local prefix, part = ARGV[1], ARGV[2]
for i = 3, #ARGV, 2 do
  local id, due = ARGV[i], ARGV[i + 1]
  if tonumber(redis.call('ZSCORE', KEYS[1], id)) == tonumber(due) then
    unschedule(prefix, part, id)
    local tomb = pkey(prefix, part, 'tomb:' .. id)
    if redis.call('GET', tomb) == 'l:' .. due then
      redis.call('DEL', tomb)
    end
    n = n + 1
  end
end
return n
