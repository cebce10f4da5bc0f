-- poll: recover actors whose holder died, then pop ready actors.
-- KEYS[1] P:leases  KEYS[2] P:ready  KEYS[3] P:paused
-- ARGV[1] now ms  ARGV[2] max actors  ARGV[3] prefix  ARGV[4] lease ms
-- ARGV[5] ms for which this poller counts as a running drain (P:awake; 0: it does not)
-- ARGV[6] the round's token ('' for none): the actors it pops are remembered under it for
--   the reservation's time, so that a poll retried after its answer was lost (or a round
--   resumed after a backend error) gets them again instead of leaving them reserved to
--   nobody until the reservation expires
-- Returns {delay epoch, actor key, ...}.
-- An expired lease (holder crashed or frozen) puts its actor back in P:ready; the next
-- holder's begin moves the dead holder's in-flight entries back to the mailbox.
if tonumber(ARGV[5]) > 0 then
  redis.call('SET', ARGV[3] .. ':awake', 1, 'PX', ARGV[5])
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, actor in ipairs(expired) do
  local expiry = tonumber(redis.call('HGET', akey(ARGV[3], actor, 'lease'), 'e') or '0')
  if expiry > tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], expiry, actor)
  else
    redis.call('ZREM', KEYS[1], actor)
    mark_ready(ARGV[3], KEYS[2], ARGV[1], actor)
  end
end
-- Actors that waited out a retry's backoff are ready again.
local rested = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, actor in ipairs(rested) do
  redis.call('ZREM', KEYS[3], actor)
  mark_ready(ARGV[3], KEYS[2], ARGV[1], actor)
end
local out = {tonumber(redis.call('GET', ARGV[3] .. ':dqepoch') or '0')}
local memo = ARGV[6] ~= '' and (ARGV[3] .. ':polled:' .. ARGV[6]) or nil
if memo and redis.call('EXISTS', memo) == 1 then
  for _, actor in ipairs(redis.call('LRANGE', memo, 0, -1)) do
    out[#out + 1] = actor
  end
  return out
end
local popped = redis.call('ZPOPMIN', KEYS[2], ARGV[2])
-- Popped actors count as leased until begin takes their real lease: a drainer that dies
-- in between leaves them to the recovery above, not stranded outside P:ready.
local reserved = tonumber(ARGV[1]) + tonumber(ARGV[4])
for i = 1, #popped, 2 do
  redis.call('ZADD', KEYS[1], reserved, popped[i])
  out[#out + 1] = popped[i]
  if memo then
    redis.call('RPUSH', memo, popped[i])
  end
end
if memo and #popped > 0 then
  -- As long as the reservation: a round cut short is resumed under its token.
  redis.call('PEXPIRE', memo, ARGV[4])
end
-- Stale wake tokens would only spin idle workers; work left over should wake one to help.
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('DEL', ARGV[3] .. ':wake')
else
  wake(ARGV[3])
end
return out
