-- promote: move due deferred messages of one delay shard into their actors' mailboxes.
-- KEYS[1] P:{dqN}:due  KEYS[2] P:ready
-- ARGV[1] now ms  ARGV[2] max messages  ARGV[3] prefix  ARGV[4] shard N
-- Atomic and idempotent: each id leaves the shard exactly once; processed ids are dropped.
-- Returns {promoted, earliest due ms left in the shard or -1}.
-- An actor whose message came due is taken before those made ready by immediate sends
-- (timely in lib.lua), in due order.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
                       ARGV[2])
local n = 0
for i = 1, #due, 2 do
  local id = due[i]
  local v = take_body(ARGV[3], ARGV[4], id)
  redis.call('ZREM', KEYS[1], id)
  if v then
    local nl = string.find(v, '\n', 1, true)
    n = n + deliver(ARGV[3], KEYS[2], timely(due[i + 1]), string.sub(v, 1, nl - 1), id, '', 0,
                    id .. string.sub(v, nl + 1))
  end
end
local left = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {n, tonumber(left[2] or '-1')}
