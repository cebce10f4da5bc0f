-- begin: take an actor's lease, recover a dead holder's claim, claim a batch, load the state.
-- KEYS[1] P:{A}:lease  KEYS[2] P:{A}:fence  KEYS[3] P:{A}:mb  KEYS[4] P:{A}:inflight
-- KEYS[5] P:{A}:state  KEYS[6] P:{A}:att  KEYS[7] P:{A}:done  KEYS[8] P:leases
-- KEYS[9] P:{A}:err  KEYS[10] P:paused  KEYS[11] P:ready  KEYS[12] P:{A}:outbox
-- KEYS[13] P:{A}:doneold
-- (P:{A}: the actor's keys, P: its partition's, both under the partition's tag: lib.lua)
-- ARGV[1] token  ARGV[2] lease ms  ARGV[3] now ms  ARGV[4] batch  ARGV[5] actor key
-- ARGV[6] 'l' for a long-work worker: it takes an actor resting in the long-work lane
-- Returns 0 when the lease is held by someone else, else
-- {fence, state or '', version, recovered, duplicates, n outbox, outbox record..., n entries,
-- entry..., then for each entry that failed before: its position (from 1), its attempts,
-- its first error or ''}. The outbox holds what earlier turns sent to
-- other partitions and is not delivered yet: the caller delivers it before this turn's
-- sends, so that the actor's sends stay in order.
-- The claimed entries at the end of a reply: n, the entries, then (position, attempts,
-- first error) of those that failed before. Most turns have none: no hash, no lookup.
local function claimed(out, entries, ids)
  out[#out + 1] = #entries
  for _, e in ipairs(entries) do
    out[#out + 1] = e
  end
  if #entries == 0 then
    return out
  end
  local has_att, has_err = redis.call('EXISTS', KEYS[6]) == 1, redis.call('EXISTS', KEYS[9]) == 1
  if not (has_att or has_err) then
    return out
  end
  if not ids then
    ids = {}
    for i, e in ipairs(entries) do
      ids[i] = string.sub(e, 1, 32)
    end
  end
  local att = has_att and chunked('HMGET', KEYS[6], ids) or {}
  local err = has_err and chunked('HMGET', KEYS[9], ids) or {}
  for i = 1, #entries do
    if att[i] or err[i] then
      out[#out + 1] = i
      out[#out + 1] = tonumber(att[i] or '0')
      out[#out + 1] = err[i] or ''
    end
  end
  return out
end

local now = tonumber(ARGV[3])
local expiry = tonumber(redis.call('HGET', KEYS[1], 'e') or '0')
if expiry > now then
  if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] then
    return 0
  end
  -- Our own lease: this begin ran before and its answer was lost. Hand back the same
  -- claim (its in-flight entries), touching nothing, so that a lost answer costs a round
  -- trip, not a lease.
  local st = redis.call('HMGET', KEYS[5], 'd', 'v')
  local out = {tonumber(redis.call('GET', KEYS[2]) or '0'), st[1] or '', tonumber(st[2] or '0'),
               0, 0, 0}
  return claimed(out, redis.call('LRANGE', KEYS[4], 0, -1))
end
-- Popped before the commit that made it rest (a retry's backoff): not before that time.
local rest = redis.call('ZSCORE', KEYS[10], ARGV[5])
if rest and tonumber(rest) >= LANE_MS then
  if ARGV[6] ~= 'l' then
    return 0  -- in the long-work lane: not for this drain
  end
elseif rest then
  if tonumber(rest) > now then
    return 0
  end
  -- Its rest is over (taken before a poll noticed): the commit must be able to make it
  -- ready again.
  redis.call('ZREM', KEYS[10], ARGV[5])
end
-- Leases run on the caller's clock (the same one that times deferred messages, so a manual
-- clock drives both); the key's own expiry only cleans up after an abandoned actor.
redis.call('DEL', KEYS[1])  -- a receipt of the last commit ('c') is not this lease's
redis.call('HSET', KEYS[1], 't', ARGV[1], 'e', now + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]) + 60000)
local fence = redis.call('INCR', KEYS[2])
-- The fence numbers leases while the actor is busy; the lease token is what guards a commit,
-- so an idle actor's fence may go (it restarts at 1).
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[2]))
redis.call('ZADD', KEYS[8], now + tonumber(ARGV[2]), ARGV[5])
-- Taken directly (a sender processing its own message) rather than popped by poll: no
-- drain should pop it meanwhile; the commit makes it ready again if work is left.
redis.call('ZREM', KEYS[11], ARGV[5])
-- A dead holder's claim goes back to the head of the mailbox, in order, attempts + 1.
local recovered = 0
while true do
  local e = redis.call('LMOVE', KEYS[4], KEYS[3], 'RIGHT', 'LEFT')
  if not e then
    break
  end
  redis.call('HINCRBY', KEYS[6], string.sub(e, 1, 32), 1)
  recovered = recovered + 1
end
local st = redis.call('HMGET', KEYS[5], 'd', 'v')
local out = {fence, st[1] or '', tonumber(st[2] or '0'), recovered, 0}
local outbox = redis.call('LRANGE', KEYS[12], 0, -1)
out[6] = #outbox
for _, record in ipairs(outbox) do
  out[#out + 1] = record
end
-- The batch in a few calls whatever its size (each Redis call costs about a microsecond).
-- Entries already processed (copies) are dropped, and so is a second copy of an id in the
-- batch (an outbox delivered twice: its committer and the next holder); a batch of nothing
-- but copies is followed by the next, so that a turn claims something while the mailbox
-- holds anything new.
local batch = tonumber(ARGV[4])
local kept, kept_ids, dups, taken = {}, {}, 0, {}
for _ = 1, 16 do
  local popped = batch > 0 and redis.call('LPOP', KEYS[3], batch) or false
  if not popped then
    break
  end
  local ids = {}
  for i, e in ipairs(popped) do
    ids[i] = string.sub(e, 1, 32)
  end
  local seen = redis.call('EXISTS', KEYS[7]) == 1 and chunked('SMISMEMBER', KEYS[7], ids) or {}
  local old = redis.call('EXISTS', KEYS[13]) == 1 and chunked('SMISMEMBER', KEYS[13], ids) or {}
  local dup_ids = {}
  for i, e in ipairs(popped) do
    if seen[i] == 1 or old[i] == 1 then
      dup_ids[#dup_ids + 1] = ids[i]
    elseif taken[ids[i]] then
      dups = dups + 1
    else
      taken[ids[i]] = true
      kept[#kept + 1] = e
      kept_ids[#kept_ids + 1] = ids[i]
    end
  end
  if #dup_ids > 0 then
    chunked('HDEL', KEYS[6], dup_ids)
    chunked('HDEL', KEYS[9], dup_ids)
    dups = dups + #dup_ids
  end
  if #kept > 0 or #popped < batch then
    break
  end
end
if #kept > 0 then
  chunked('RPUSH', KEYS[4], kept)
end
out[5] = dups
return claimed(out, kept, kept_ids)
