-- hints: the partitions that got work since a poller found them empty.
-- KEYS[1] P:{g}:hints  KEYS[2] P:{g}:wake
-- ARGV: pairs of partition, generation: partitions the caller found empty when the hint had
--   that generation; each is dropped only if no hint came since.
-- Returns {partition, generation, ...} of the hints left. With none left, stale wake tokens
-- go too (they would only spin idle workers; any hint given later brings its own token).
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
local left = redis.call('HGETALL', KEYS[1])
if #left == 0 then
  redis.call('DEL', KEYS[2])
end
return left
