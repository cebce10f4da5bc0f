-- Shared helpers, prepended to every script when it is loaded.
-- Key schema (P = prefix, A = actor key "type/id", N = delay shard):
--   P:ready              zset  A -> ms it became ready (a minute earlier for a deferred
--                              message that came due: timely below)
--   P:wake               list  wake-up tokens for idle workers (BLPOP), at most 64
--   P:leases             zset  A -> lease expiry ms, from the moment poll pops A (so an
--                              actor popped by a drainer that then dies is recovered)
--   P:paused             zset  A -> ms until which it rests: a retry's backoff keeping order
--   P:dlq                list  msgpack dead-letter records, newest first
--   P:dqepoch            int   bumped whenever a delay shard gets a new earliest due time
--   P:{A}:mb             list  mailbox entries (32-char id .. msgpack envelope)
--   P:{A}:inflight       list  entries claimed by the current turn
--   P:{A}:lease          hash  t = lease token, e = expiry ms; after the commit, for 5 s,
--                              e = 0 and c = the version it wrote (its receipt)
--   P:{A}:fence          int   fencing number, +1 per lease
--   P:{A}:state          hash  d = state bytes, v = version, f = fence of the writer
--   P:{A}:att            hash  id -> failed attempts so far
--   P:{A}:err            hash  id -> the first error of a message being retried
--   P:{A}:done           zset  processed id -> commit ms (dedup window)
--   P:reply:<id>         list  one reply record of a processed message (JSON), for ask
--   P:awake              str   a drain is running, or a wake is on its way (push.lua)
--   P:polled:<token>     list  the actors a round's poll popped, for a lease: the same poll
--                              run again (its answer lost) gets them again
--   P:cancelled:<id>     str   a cancel's receipt: a retried cancel still answers True
--   P:tomb:<id>          str   'c': a cancelled deferred message that may still be held
--                              outside Redis (SQS, Scheduler), dropped when it lands;
--                              'l:<due ms>': landed already, a second copy is dropped
--   P:{dqN}:due          zset  id -> due ms; N comes from the target hash in the id, so one
--                              actor's messages share a shard, and equal due times leave
--                              it in id order, which is send order for one sender
--   P:{dqN}:mB           hash  id -> A .. "\n" .. envelope body (the entry without its id);
--                              B = 1024 buckets by the id's random bits, so that each
--                              hash stays small and compact (listpack) even with millions
--                              of pending messages
-- Scripts that fan out to other actors build those keys from P (single-node Redis).
local unpack = unpack or table.unpack

-- One command over many arguments, in chunks that Lua's unpack can take; the replies of a
-- command that answers one value per argument (ZMSCORE, HMGET) are joined in order. A
-- false in a reply (nil) is kept at its place.
local CHUNK = 1000
local function chunked(cmd, key, args)
  local out = {}
  for first = 1, #args, CHUNK do
    local last = math.min(first + CHUNK - 1, #args)
    local r = redis.call(cmd, key, unpack(args, first, last))
    if type(r) == 'table' then
      for i = 1, last - first + 1 do
        out[first + i - 1] = r[i]
      end
    end
  end
  return out
end

local function akey(prefix, actor, suffix)
  return prefix .. ':{' .. actor .. '}:' .. suffix
end

local function dkey(prefix, shard, suffix)
  return prefix .. ':{dq' .. shard .. '}:' .. suffix
end

-- The bucket hash of a deferred message (same rule as Keys.delay_msg in keys.py).
local function mkey(prefix, shard, id)
  return dkey(prefix, shard, 'm' .. (tonumber(string.sub(id, 21, 23), 16) % 1024))
end

-- The bucket of a message deferred before ids carried their target (by id chars 9-11); such
-- messages may still wait after an upgrade, so reads fall back to it and deletes cover both.
local function old_mkey(prefix, shard, id)
  return dkey(prefix, shard, 'm' .. (tonumber(string.sub(id, 9, 11), 16) % 1024))
end

-- Take a deferred message's body out of its bucket (either rule); nil if it has none.
local function take_body(prefix, shard, id)
  for _, m in ipairs({mkey(prefix, shard, id), old_mkey(prefix, shard, id)}) do
    local v = redis.call('HGET', m, id)
    if v then
      redis.call('HDEL', m, id)
      return v
    end
  end
  return nil
end

-- Wake idle workers blocked on P:wake. Tokens are only hints (P:ready is the truth), so the
-- list is kept short and a worker that dies after taking one loses nothing.
local function wake(prefix)
  redis.call('LPUSH', prefix .. ':wake', 1)
  redis.call('LTRIM', prefix .. ':wake', 0, 63)
end

-- The ready time of an actor whose deferred message came due: a minute before its due time.
-- The ready set is served oldest first, so it goes ahead of the actors made ready by
-- immediate sends in the last minute (a backlog does not make timed messages late), in due
-- order among themselves, and behind any that has waited longer (deferred messages due
-- faster than they are drained cannot starve immediate ones).
local TIMELY_MS = 60000
local function timely(due)
  return tonumber(due) - TIMELY_MS
end

local function mark_ready(prefix, ready, now, actor)
  if redis.call('ZSCORE', prefix .. ':paused', actor) then
    return  -- waiting out a retry's backoff: poll makes it ready when that ends
  end
  -- LT: an actor already ready keeps the earlier of the two times (the ready set is served
  -- oldest first); 1 only when it was not ready.
  if redis.call('ZADD', ready, 'LT', now, actor) == 1 then
    wake(prefix)
  end
end

-- Deliver one message: into the target's mailbox (due == '') or into the delay queue.
-- Ids the target has already processed are dropped, so re-sending has no effect twice.
local function deliver(prefix, ready, now, target, id, due, shard, entry)
  if due == '' then
    if redis.call('ZSCORE', akey(prefix, target, 'done'), id) then
      return 0
    end
    redis.call('RPUSH', akey(prefix, target, 'mb'), entry)
    mark_ready(prefix, ready, now, target)
    return 1
  end
  local z = dkey(prefix, shard, 'due')
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  if redis.call('ZADD', z, 'NX', due, id) == 1 then
    redis.call('HSET', mkey(prefix, shard, id), id, target .. '\n' .. string.sub(entry, 33))
    -- A new earliest due time in this shard: bump the epoch that tells pollers to look
    -- again, and wake an idle worker that is blocked until a later due time.
    if first[2] == nil or tonumber(due) < tonumber(first[2]) then
      redis.call('INCR', prefix .. ':dqepoch')
      wake(prefix)
    end
  end
  return 1
end

-- Cancel a deferred message wherever it is held: it is dropped when it lands in Redis.
-- Returns the tombstone's previous value: false (none), 'c' (cancelled before) or
-- 'l:<due ms>' (landed already).
local function tombstone(prefix, id, ttl_ms)
  return redis.call('SET', prefix .. ':tomb:' .. id, 'c', 'PX', ttl_ms, 'GET')
end
