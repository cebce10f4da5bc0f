-- launch: whether to start a long-work worker: none runs (P:{g}:lane:present, each worker
-- with its expiry) and none was started within the last ARGV[1] ms (P:{g}:lane:launch, taken
-- here). ARGV[2] now ms. Returns 1 to start one.
-- KEYS[1] P:{g}:lane:present  KEYS[2] P:{g}:lane:launch
if redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[2], '+inf') > 0 then
  return 0
end
if redis.call('SET', KEYS[2], 1, 'NX', 'PX', ARGV[1]) then
  return 1
end
return 0
