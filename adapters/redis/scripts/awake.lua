-- awake: whether a drain is running, kept with P:awake, so that senders wake one only when
-- none is (one wake per idle-to-busy transition, not one per message).
-- KEYS[1] P:ready  KEYS[2] P:awake
-- ARGV[1] 'wake': if actors are ready and no drain is known to run, take P:awake for ARGV[2]
--   ms and return 1 (the caller starts a drain); else 0.
-- ARGV[1] 'rest': a drain that found nothing to do is about to end: if no actor is ready,
--   drop P:awake and return 1 (it may end: the next send wakes a drain); else 0 (it must
--   look again: work arrived while it decided).
-- ARGV[1] 'drop': the wake could not be sent: drop P:awake so that the next send tries.
if ARGV[1] == 'drop' then
  redis.call('DEL', KEYS[2])
  return 1
end
if ARGV[1] == 'rest' then
  if redis.call('ZCARD', KEYS[1]) > 0 then
    return 0
  end
  redis.call('DEL', KEYS[2])
  return 1
end
if redis.call('ZCARD', KEYS[1]) == 0 then
  return 0
end
if redis.call('SET', KEYS[2], 1, 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
