-- commit: write a turn's results and release its lease, only while the lease is still ours.
-- KEYS[1] P:{A}:lease  KEYS[2] P:{A}:mb  KEYS[3] P:{A}:inflight  KEYS[4] P:{A}:state
-- KEYS[5] P:{A}:att  KEYS[6] P:{A}:done  KEYS[7] P:leases  KEYS[8] P:ready  KEYS[9] P:dlq
-- KEYS[10] P:{A}:err (first error of a message still being retried)  KEYS[11] P:paused
-- KEYS[12] P:{A}:outbox  KEYS[13] P:outboxes  KEYS[14] P:{A}:doneold  KEYS[15] P:{A}:donetime
-- KEYS[16] P:long (the long-work lane)  KEYS[17] P:rix:<b> (the actor's index hash: actor ->
-- how many reminders it has)  KEYS[18] P:reminders:n (the partition's reminders, all actors)
-- KEYS[19] P:reminders:a (the partition's actors that have some)
-- (P: the actor's partition)
-- ARGV[1] prefix  ARGV[2] inline signals  ARGV[3] token  ARGV[4] actor key  ARGV[5] now ms
-- ARGV[6] state bytes ('' = unchanged)  ARGV[7] fence  ARGV[8] dedup window ms
-- ARGV[9] dedup max ids (0: the set is left as it is)  ARGV[10] the actor's partition
-- ARGV[11] the outcome of each in-flight entry, one letter each: 'd' done, 'r' retry, 'k'
--   keep, 'w' withdrawn (re-sent deferred by the outbox), 'x' dead letter
-- ARGV[12] n ids, then the entries' message ids in order (n = one per entry; 0: read from
--   the in-flight list), then n details, then one per 'r' (the error) and 'x' (the record),
--   in order
-- then n deliveries made here, each 5 args: target, partition, id, due ms or '', entry (on a
--   single node every send; on a cluster those to this partition)
-- then n outbox records (sends and cancels for other partitions, delivered after this
--   commit by the caller: an RPUSH to P:{A}:outbox, and the actor in P:outboxes from the
--   ms given next, after which whoever polls the partition delivers them)
-- then n cancels, each 2 args: id, partition; then the tombstone lifetime ms (0: none; set
--   when deferred messages also live outside Redis, see land.lua); then the state's lifetime
--   ms: 0 kept for good, -1 deleted (the state is the model's defaults), > 0 expires (a marker
--   of state kept elsewhere, S3); then the ms before which the actor is not taken again
--   (0: none; a retry's backoff); then the replies' lifetime ms and n replies, each 2 args:
--   message id, reply record (kept under P:reply:<id>; the first reply of an id stays);
--   then '1' if the actor ends (ctx.delete: its state, dedup set, attempts and errors go) or
--   '0', and the ms after which an idle actor's keys expire together (0: never); then the
--   lane: '' (the actor's lane is left as it is), 'l' (it goes to, or stays in, the long-work
--   lane: only long-work workers take it, from the retry time if any) or 'e' (a long-work
--   worker's commit, or an ending: an actor in the lane goes back to the ordinary lane once
--   its mailbox is empty; one not in the lane is left as it is); then how many reminders the
--   actor has after this commit (-1: unchanged; an ending has none)
-- Keys of an idle actor go away: the done sets expire a dedup window after the last commit,
-- the lease 5 s after the commit (its receipt), att/err/mb/inflight when empty, the fence
-- with its lease (begin.lua), the state as above. Only state that differs from the defaults
-- stays.
-- Returns {signals, 1, version} or {'', 0} when the lease was lost (nothing written). The
-- lease key keeps the token and the version for 5 s after the commit ('e' 0, 'c' version):
-- the same commit run again (its answer lost to a reset) answers {'', 1, version} and writes
-- nothing.
if redis.call('HGET', KEYS[1], 't') ~= ARGV[3] then
  return {'', 0}
end
local committed = redis.call('HGET', KEYS[1], 'c')
if committed then
  return {'', 1, tonumber(committed)}
end
local now = tonumber(ARGV[5])
local prefix, part, actor = ARGV[1], ARGV[10], ARGV[4]
local codes = ARGV[11]
local n = #codes
local n_ids = tonumber(ARGV[12])
local at = 14 + n_ids  -- the details of 'r' and 'x' outcomes, in order
local held = redis.call('LLEN', KEYS[3])
if n ~= held then
  return redis.error_reply('in-flight list holds ' .. held .. ' entries, commit has ' .. n)
end
local back = {}
-- Done and dead-lettered ids go into the dedup set, theirs and withdrawn ones' attempts and
-- errors out, each in one call for the whole batch.
local done_ids, gone = {}, {}
if n_ids == n and not string.find(codes, '[^d]') then
  -- Every message done (most turns): the ids as the caller gave them, the in-flight entries
  -- not read back.
  for i = 1, n do
    done_ids[i] = ARGV[12 + i]
  end
  gone = done_ids
else
  local inflight = redis.call('LRANGE', KEYS[3], 0, -1)
  for i = 1, n do
    local code = string.sub(codes, i, i)
    local e = inflight[i]
    local id = string.sub(e, 1, 32)
    if code == 'd' or code == 'x' then
      done_ids[#done_ids + 1] = id
      gone[#gone + 1] = id
      if code == 'x' then
        redis.call('LPUSH', KEYS[9], ARGV[at])
        at = at + 1
      end
    elseif code == 'r' then
      redis.call('HINCRBY', KEYS[5], id, 1)
      redis.call('HSETNX', KEYS[10], id, ARGV[at])
      at = at + 1
      back[#back + 1] = e
    elseif code == 'w' then
      -- the re-sent copy in the outbox carries the raised attempt in its envelope
      gone[#gone + 1] = id
    else
      back[#back + 1] = e
    end
  end
end
-- The dedup set: ids go into the current generation. It becomes the old one (the one before
-- is dropped) once it is a window old or holds done_max ids; both go once the last write is
-- a window old. So an id stays at least a window (and the last done_max ids stay), at most
-- two, and a commit that does not know the actor type's window (0: a release, a recovery)
-- does not cut a longer one down to a default.
local window, cap = tonumber(ARGV[8]), tonumber(ARGV[9])
if #done_ids > 0 or window > 0 then
  local times = redis.call('GET', KEYS[15])
  local first, last = now, now
  if times then
    local sp = string.find(times, ' ', 1, true)
    first, last = tonumber(string.sub(times, 1, sp - 1)), tonumber(string.sub(times, sp + 1))
  end
  if window > 0 and now - last >= window then
    redis.call('DEL', KEYS[6], KEYS[14], KEYS[15])
    first = now
  elseif #done_ids > 0 and ((window > 0 and now - first >= window)
                            or (cap > 0 and redis.call('SCARD', KEYS[6]) >= cap)) then
    if redis.call('EXISTS', KEYS[6]) == 1 then
      redis.call('RENAME', KEYS[6], KEYS[14])
      if window > 0 then
        redis.call('PEXPIRE', KEYS[14], window)
      end
    end
    first = now
  end
  if #done_ids > 0 then
    chunked('SADD', KEYS[6], done_ids)
    redis.call('SET', KEYS[15], first .. ' ' .. now)
    if window > 0 then
      redis.call('PEXPIRE', KEYS[6], window)
      redis.call('PEXPIRE', KEYS[15], window)
    end
  end
end
if #gone > 0 then
  for _, key in ipairs({KEYS[5], KEYS[10]}) do
    if redis.call('EXISTS', key) == 1 then
      chunked('HDEL', key, gone)
    end
  end
end
for i = #back, 1, -1 do
  redis.call('LPUSH', KEYS[2], back[i])
end
redis.call('DEL', KEYS[3])
local version = tonumber(redis.call('HGET', KEYS[4], 'v') or '0')
if ARGV[6] ~= '' then
  version = redis.call('HINCRBY', KEYS[4], 'v', 1)
  redis.call('HSET', KEYS[4], 'd', ARGV[6], 'f', ARGV[7])
end
local i = 14 + n_ids + tonumber(ARGV[13 + n_ids])
local n_out = tonumber(ARGV[i])
for j = 1, n_out do
  local k = i + 1 + (j - 1) * 5
  deliver(prefix, now, ARGV[k], ARGV[k + 1], ARGV[k + 2], ARGV[k + 3], ARGV[k + 4])
end
i = i + 1 + n_out * 5
local n_remote = tonumber(ARGV[i])
if n_remote > 0 then
  local records = {}
  for j = 1, n_remote do
    records[j] = ARGV[i + j]
  end
  chunked('RPUSH', KEYS[12], records)
  redis.call('ZADD', KEYS[13], 'NX', now + tonumber(ARGV[i + n_remote + 1]), actor)
end
i = i + n_remote + 2
local n_cancel = tonumber(ARGV[i])
local tomb_ms = tonumber(ARGV[i + 1 + n_cancel * 2])
local state_ms = tonumber(ARGV[i + 2 + n_cancel * 2])
local pause = tonumber(ARGV[i + 3 + n_cancel * 2])
local r = i + 4 + n_cancel * 2
local reply_ms = ARGV[r]
local n_replies = tonumber(ARGV[r + 1])
local ends = ARGV[r + 2 + 2 * n_replies] == '1'
local idle_ms = tonumber(ARGV[r + 3 + 2 * n_replies])
local lane = ARGV[r + 4 + 2 * n_replies] or ''
local rem = tonumber(ARGV[r + 5 + 2 * n_replies] or '-1')
if ends then
  rem = 0
end
if rem >= 0 then
  -- The index of actors with reminders, and the count beside it (stats, reminders list).
  local had = tonumber(redis.call('HGET', KEYS[17], actor) or '0')
  if rem ~= had then
    if rem > 0 then
      redis.call('HSET', KEYS[17], actor, rem)
    else
      redis.call('HDEL', KEYS[17], actor)
    end
    redis.call('INCRBY', KEYS[18], rem - had)
    if had == 0 or rem == 0 then
      redis.call('INCRBY', KEYS[19], had == 0 and 1 or -1)
    end
  end
end
for j = 1, n_replies do
  -- A list of one, so that an asker can block on it (BLMOVE to itself) and a later reader
  -- still finds it.
  local key = pkey(prefix, part, 'reply:' .. ARGV[r + 2 * j])
  if redis.call('EXISTS', key) == 0 then
    redis.call('RPUSH', key, ARGV[r + 2 * j + 1])
    redis.call('PEXPIRE', key, reply_ms)
  end
end
if state_ms < 0 then
  redis.call('DEL', KEYS[4])
elseif state_ms > 0 then
  redis.call('PEXPIRE', KEYS[4], state_ms)
end
for j = 1, n_cancel do
  local k = i + 1 + (j - 1) * 2
  unschedule(prefix, ARGV[k + 1], ARGV[k])
  if tomb_ms > 0 and not is_member(ARGV[k]) then
    tombstone(prefix, ARGV[k + 1], ARGV[k], tomb_ms)
  end
end
if ends then
  -- The actor ends: nothing of it stays (the messages queued behind start it anew).
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[6], KEYS[10], KEYS[14], KEYS[15])
elseif idle_ms > 0 then
  -- Its keys expire together once it has been idle that long, each commit starting the
  -- count again (sooner where this commit says so: the dedup window, an S3 marker's life).
  local done_ms = (window > 0 and window < idle_ms) and window or idle_ms
  local state_life = (state_ms > 0 and state_ms < idle_ms) and state_ms or idle_ms
  redis.call('PEXPIRE', KEYS[4], state_life)
  for _, key in ipairs({KEYS[6], KEYS[14], KEYS[15]}) do
    redis.call('PEXPIRE', key, done_ms)
  end
  redis.call('PEXPIRE', KEYS[5], idle_ms)
  redis.call('PEXPIRE', KEYS[10], idle_ms)
end
redis.call('HSET', KEYS[1], 'e', 0, 'c', version)
redis.call('PEXPIRE', KEYS[1], 5000)
redis.call('ZREM', KEYS[7], actor)
if lane == 'e' and not redis.call('ZSCORE', KEYS[16], actor) then
  lane = ''  -- not in the lane (any more): nothing to leave
end
if lane == 'e' and redis.call('LLEN', KEYS[2]) == 0 then
  -- Its long work is done: what arrives next is for any drain.
  redis.call('ZREM', KEYS[16], actor)
  redis.call('ZREM', KEYS[11], actor)
elseif lane ~= '' then
  -- The long-work lane: no ordinary drain takes it (it rests for good); long-work workers
  -- take it from the retry time, if any.
  redis.call('ZADD', KEYS[16], pause > now and pause or now, actor)
  redis.call('ZADD', KEYS[11], LANE_MS, actor)
  redis.call('ZREM', KEYS[8], actor)
elseif pause > now then
  -- A retry with backoff keeps the actor's order: the actor rests (is not taken, whatever
  -- arrives) until the retry time; poll makes it ready then.
  redis.call('ZADD', KEYS[11], pause, actor)
  redis.call('ZREM', KEYS[8], actor)
elseif redis.call('LLEN', KEYS[2]) > 0 then
  mark_ready(prefix, part, now, actor)
end
return {finish_signals(prefix, ARGV[2]), 1, version}
