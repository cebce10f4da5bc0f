-- awake: whether a drain is running, kept with P:{g}:awake, so that senders wake one only
-- when none is (one wake per idle-to-busy transition, not one per message).
-- KEYS[1] P:{g}:awake  KEYS[2] P:{g}:poke
-- ARGV[1] prefix  ARGV[2] mode  ARGV[3] wake ms  ARGV[4] '1'/'0': whether actors are ready,
--   as the caller counted them (a cluster), or '' to count here over ARGV[5] partitions
-- mode 'wake': if actors are ready and no drain is known to run, take P:{g}:awake for the
--   wake ms and return 1 (the caller starts a drain); else 0.
-- mode 'rest': a drain that found nothing to do is about to end: if no actor is ready and
--   no send poked it since it cleared P:{g}:poke (before it counted), drop P:{g}:awake and
--   return 1 (it may end: the next send wakes a drain); else 0 (look again).
-- mode 'drop': the wake could not be sent: drop P:{g}:awake so that the next send tries.
if ARGV[2] == 'drop' then
  redis.call('DEL', KEYS[1])
  return 1
end
local ready = ARGV[4] == '1'
if ARGV[4] == '' then
  for p = 0, tonumber(ARGV[5]) - 1 do
    if redis.call('ZCARD', pkey(ARGV[1], p, 'ready')) > 0 then
      ready = true
      break
    end
  end
  if ARGV[2] == 'rest' then
    redis.call('DEL', KEYS[2])  -- counted in this script: nothing can come in between
  end
end
if ARGV[2] == 'rest' then
  if ready or redis.call('DEL', KEYS[2]) == 1 then
    return 0
  end
  redis.call('DEL', KEYS[1])
  return 1
end
if not ready then
  return 0
end
if redis.call('SET', KEYS[1], 1, 'NX', 'PX', ARGV[3]) then
  return 1
end
return 0
