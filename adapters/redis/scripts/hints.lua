-- hints: the partitions that got work since a poller found them empty.
-- KEYS[1] P:{g}:hints  KEYS[2] P:{g}:wake  KEYS[3] P:{g}:awake
-- ARGV[1] ms for which the caller counts as a running drain (P:{g}:awake; 0: it does not),
--   then pairs of partition, generation: partitions the caller found empty when the hint had
--   that generation; each is dropped only if no hint came since.
-- Returns {partition, generation, ...} of the hints left. With none left, stale wake tokens
-- go too (they would only spin idle workers; any hint given later brings its own token).
if tonumber(ARGV[1]) > 0 then
  redis.call('SET', KEYS[3], 1, 'PX', ARGV[1])
end
for i = 2, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
local left = redis.call('HGETALL', KEYS[1])
if #left == 0 then
  redis.call('DEL', KEYS[2])
end
return left
