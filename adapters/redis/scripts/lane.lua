-- lane: reserve actors of the long-work lane to a long-work worker for a lease: another
-- worker skips them meanwhile (the lease itself is begin's). An actor not in the lane, or
-- reserved to another worker, or resting out a retry's backoff, is skipped.
-- KEYS (cluster) [1] P:{pn}:long, one partition per call
-- ARGV[1] prefix  ARGV[2] now ms  ARGV[3] lease ms, then pairs: partition, actor
-- Returns the actors reserved.
local now, lease_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV, 2 do
  local key = KEYS[1] or pkey(ARGV[1], ARGV[i], 'long')
  local score = redis.call('ZSCORE', key, ARGV[i + 1])
  if score and tonumber(score) <= now then
    redis.call('ZADD', key, now + lease_ms, ARGV[i + 1])
    out[#out + 1] = ARGV[i + 1]
  end
end
return out
