-- poll: recover actors whose holder died, then pop ready actors.
-- KEYS[1] P:leases  KEYS[2] P:ready
-- ARGV[1] now ms  ARGV[2] max actors  ARGV[3] prefix
-- An expired lease (holder crashed or frozen) puts its actor back in P:ready; the next
-- holder's begin moves the dead holder's in-flight entries back to the mailbox.
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, actor in ipairs(expired) do
  local expiry = tonumber(redis.call('HGET', akey(ARGV[3], actor, 'lease'), 'e') or '0')
  if expiry > tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], expiry, actor)
  else
    redis.call('ZREM', KEYS[1], actor)
    redis.call('ZADD', KEYS[2], 'NX', ARGV[1], actor)
  end
end
local popped = redis.call('ZPOPMIN', KEYS[2], ARGV[2])
local out = {}
for i = 1, #popped, 2 do
  if popped[i] ~= '~wake' then
    out[#out + 1] = popped[i]
  end
end
return out
