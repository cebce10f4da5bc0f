-- Shared helpers, prepended to every script when it is loaded.
-- Key schema (P = prefix, n = partition, A = actor key "type/id"). Every actor belongs to one
-- partition (keys.py); a partition's keys and its actors' keys share the hash tag {pn}, so on
-- a Redis Cluster each partition is one slot and each script below touches one slot.
--   P:{pn}:ready         zset  A -> ms it became ready (a minute earlier for a deferred
--                              message that came due: timely below)
--   P:{pn}:leases        zset  A -> lease expiry ms, from the moment poll pops A (so an
--                              actor popped by a drainer that then dies is recovered)
--   P:{pn}:paused        zset  A -> ms until which it rests: a retry's backoff keeping order;
--                              LANE_MS for an actor in the long-work lane (no drain of the
--                              ordinary lane takes it)
--   P:{pn}:long          zset  A -> ms from which a long-work worker may take it: actors whose
--                              work does not fit a Lambda invocation (lane.lua)
--   P:{pn}:dlq           list  msgpack dead-letter records, newest first
--   P:{pn}:due           zset  id -> due ms of the partition's deferred messages; equal due
--                              times stay in id order, which is send order for one sender
--   P:{pn}:mB            hash  id -> A .. "\n" .. envelope body (the entry without its id);
--                              B = 256 buckets by the id's random bits, so that each hash
--                              stays small and compact (listpack) with millions pending
--   P:{pn}:outboxes      zset  A -> ms after which its undelivered outbox is delivered by
--                              whoever polls the partition (its committer died meanwhile)
--   P:{pn}:polled:<tok>  list  the actors a round's poll popped, for a lease: the same poll
--                              run again (its answer lost) gets them again
--   P:{pn}:cancelled:<id> str  a cancel's receipt: a retried cancel still answers True
--   P:{pn}:tomb:<id>     str   'c': a cancelled deferred message that may still be held
--                              outside Redis (SQS, Scheduler), dropped when it lands;
--                              'l:<due ms>': landed already, a second copy is dropped
--   P:{pn}:reply:<id>    list  one reply record of a processed message (JSON), for ask
--   P:{pn}:A:mb          list  mailbox entries (32-char id .. msgpack envelope)
--   P:{pn}:A:inflight    list  entries claimed by the current turn
--   P:{pn}:A:lease       hash  t = lease token, e = expiry ms; after the commit, for 5 s,
--                              e = 0 and c = the version it wrote (its receipt)
--   P:{pn}:A:fence       int   fencing number, +1 per lease
--   P:{pn}:A:state       hash  d = state bytes, v = version, f = fence of the writer
--   P:{pn}:A:att         hash  id -> failed attempts so far
--   P:{pn}:A:err         hash  id -> the first error of a message being retried
--   P:{pn}:A:done        set   ids processed (dedup), the current generation
--   P:{pn}:A:doneold     set   the generation before it
--   P:{pn}:A:donetime    str   "<first> <last>": the ms of the current generation's first and
--                              last write (commit.lua rotates the generations by these times
--                              and by count, so that every id stays at least a dedup window
--                              and the last done_max ids stay, at a set's cost per id)
--   P:{pn}:A:outbox      list  sends of committed turns to other partitions, not yet
--                              delivered (cluster: a commit touches its own slot only)
-- Shared by all partitions (hash tag {g}):
--   P:{g}:partitions     int   the partition count the data was written with
--   P:{g}:hints          hash  n -> generation: partitions that got work since a poller
--                              found them empty (a poller removes one only at the generation
--                              it saw, so a hint given meanwhile stays)
--   P:{g}:gen            int   the last generation given to a hint
--   P:{g}:wake           list  wake-up tokens for idle workers (BLPOP), at most 64
--   P:{g}:awake          str   a drain is running, or a wake is on its way (push)
--   P:{g}:poke           str   a send found P:{g}:awake taken: a drain about to rest looks
--                              again
--   P:{g}:armed          int   the due time of the timed wake on its way
--   P:{g}:lane:present   zset  long-work worker id -> ms until which it runs (renewed)
--   P:{g}:lane:launch    str   a long-work worker was started and is on its way
-- On a cluster every script declares every key it touches (poll.lua's lease check and
-- promotion, which find their keys as they run, are left to a single node; promote.lua does
-- it on a cluster): a slot being moved to another node holds some keys on each node for a
-- while, and Redis then refuses the whole script (TRYAGAIN, or ASK to the other node) instead
-- of stopping it at a key this node no longer holds, after some of its writes.
-- A script that makes work ready records a signal (the partition); on a single node it
-- applies it to the {g} keys itself (ARGV[2] = '1'), on a cluster it returns it and the
-- caller applies it with signal.lua once the script has run.
local unpack = unpack or table.unpack
-- The rest of an actor in the long-work lane: past any real time (the year 37,000).
local LANE_MS = 2 ^ 50

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

local function pkey(prefix, part, suffix)
  return prefix .. ':{p' .. part .. '}:' .. suffix
end

local function akey(prefix, part, actor, suffix)
  return prefix .. ':{p' .. part .. '}:' .. actor .. ':' .. suffix
end

local function gkey(prefix, suffix)
  return prefix .. ':{g}:' .. suffix
end

-- The bucket hash of a deferred message (same rule as Keys.delay_msg in keys.py).
local function mkey(prefix, part, id)
  return pkey(prefix, part, 'm' .. (tonumber(string.sub(id, 21, 23), 16) % 256))
end

-- A reminder's pending occurrence is its member '~<actor>\n<name>' alone (reminders.py).
local function is_member(id)
  return string.byte(id, 1) == 126
end

-- The mailbox entry a member due at ``due`` (its score) is promoted as: target, id (the same
-- for the same member and due time: a re-armed occurrence is processed once), compact entry
-- '<id>\0<actor>\n<name>\n<due ms>' (envelope._compact reads it). Plain arithmetic, no
-- redis.sha1hex: the embedded fakeredis has none.
local function hash32(s, mul)
  local h = 0
  for i = 1, #s do
    h = (h * mul + string.byte(s, i)) % 4294967291  -- exact in a double: below 2^38
  end
  return h
end

local function occurrence_of(id, due, part)
  local nl = string.find(id, '\n', 2, true)
  if not nl then
    return nil  -- not a member this code wrote: dropped, never an error for the partition
  end
  local target = string.sub(id, 2, nl - 1)
  local ms = tonumber(due)
  local hi = math.floor(ms / 16777216)
  -- 32 hex digits: the due time (ids of one actor sort by it), hashes of the member, and at
  -- 17-20 the partition, where every id names its partition (Keys.part_of_id).
  local mid = string.format('%06x%06x%04x%04x%04x%08x', hi, ms - hi * 16777216,
                            hash32(id, 31) % 65536, tonumber(part), hash32(id, 7) % 65536,
                            hash32(id, 131))
  return target, mid, mid .. '\0' .. string.sub(id, 2) .. '\n' .. string.format('%.0f', ms)
end

-- Take a deferred message's body out of its bucket; nil if it has none (a member has none).
local function take_body(prefix, part, id)
  if is_member(id) then
    return nil
  end
  local m = mkey(prefix, part, id)
  local v = redis.call('HGET', m, id)
  if v then
    redis.call('HDEL', m, id)
  end
  return v
end

-- Signals of this script run: partitions that got ready actors or a new earliest due time,
-- and (poll) partitions with ready actors left over, for other workers to help with.
local SIG = {ready = {}, due = {}, left = {}, any_ready = false}

-- A generation never used before: not a count per partition, which would start again at 1
-- once a hint is dropped, nor a count alone, which a Redis that lost its last writes would
-- give again: its time in microseconds and a count.
local function new_gen(prefix)
  local t = redis.call('TIME')
  local n = redis.call('INCR', gkey(prefix, 'gen')) % 1000
  return t[1] .. string.format('%06d%03d', tonumber(t[2]), n)
end

-- Apply signals to the {g} keys: a hint per partition, and a wake token for idle workers
-- blocked on P:{g}:wake (tokens are only hints, so the list is kept short and a worker that
-- dies after taking one loses nothing). A partition with work left over keeps the hint it
-- has (a new generation would send every poller that looked at it there again, the one
-- that just did too); it gets one only where it has none (a hint lost with a failover).
local function apply_signal(prefix, parts, left)
  local hints = gkey(prefix, 'hints')
  local any = false
  local gen
  for p, _ in pairs(parts) do
    gen = gen or new_gen(prefix)
    redis.call('HSET', hints, p, gen)
    any = true
  end
  for p, _ in pairs(left or {}) do
    if not parts[p] and redis.call('HEXISTS', hints, p) == 0 then
      gen = gen or new_gen(prefix)
      redis.call('HSET', hints, p, gen)
    end
    any = true
  end
  if any then
    redis.call('LPUSH', gkey(prefix, 'wake'), 1)
    redis.call('LTRIM', gkey(prefix, 'wake'), 0, 63)
  end
end

-- A script's signals as it ends: applied here (inline = '1', a single node) or returned as
-- a string for signal.lua: '1' or '0' (whether an actor is ready), then 'r<n>' / 'd<n>' /
-- 'l<n>' (ready, due, left over).
local function finish_signals(prefix, inline)
  if inline == '1' then
    local parts = {}
    for p, _ in pairs(SIG.ready) do parts[p] = true end
    for p, _ in pairs(SIG.due) do parts[p] = true end
    apply_signal(prefix, parts, SIG.left)
    return SIG.any_ready and '1' or '0'
  end
  local out = {SIG.any_ready and '1' or '0'}
  for p, _ in pairs(SIG.ready) do out[#out + 1] = 'r' .. p end
  for p, _ in pairs(SIG.due) do out[#out + 1] = 'd' .. p end
  for p, _ in pairs(SIG.left) do out[#out + 1] = 'l' .. p end
  return table.concat(out, ' ')
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

-- What this script run has marked ready: partition .. ' ' .. actor -> the time it was
-- marked, or false for an actor resting. A run delivering many messages to one actor marks
-- it once (its backoff and ready set are written by no one else meanwhile).
local MARKED = {}

local function mark_ready(prefix, part, now, actor)
  local seen = part .. ' ' .. actor
  local before = MARKED[seen]
  if before == false or (before and before <= tonumber(now)) then
    return
  end
  if redis.call('ZSCORE', pkey(prefix, part, 'paused'), actor) then
    MARKED[seen] = false
    return  -- waiting out a retry's backoff: poll makes it ready when that ends
  end
  MARKED[seen] = tonumber(now)
  SIG.any_ready = true
  -- LT: an actor already ready keeps the earlier of the two times (the ready set is served
  -- oldest first); 1 only when it was not ready.
  if redis.call('ZADD', pkey(prefix, part, 'ready'), 'LT', now, actor) == 1 then
    SIG.ready[tonumber(part)] = true
  end
end

-- Which of an actor's done sets exist, looked up once per script run: a run delivering many
-- messages to one actor then asks only the sets it has (commit.lua records its ids before
-- it delivers, so no set appears later in a run).
local DONE_SETS = {}

-- Whether an actor has processed a message id (either generation of its done set).
local function was_done(prefix, part, actor, id)
  local seen = part .. ' ' .. actor
  local sets = DONE_SETS[seen]
  if not sets then
    sets = {}
    for _, suffix in ipairs({'done', 'doneold'}) do
      local key = akey(prefix, part, actor, suffix)
      if redis.call('EXISTS', key) == 1 then
        sets[#sets + 1] = key
      end
    end
    DONE_SETS[seen] = sets
  end
  for _, key in ipairs(sets) do
    if redis.call('SISMEMBER', key, id) == 1 then
      return true
    end
  end
  return false
end

-- Deliver one message: into the target's mailbox (due == '') or into the delay queue.
-- Ids the target has already processed are dropped, so re-sending has no effect twice.
local function deliver(prefix, now, target, part, id, due, entry)
  if due == '' then
    if was_done(prefix, part, target, id) then
      return 0
    end
    redis.call('RPUSH', akey(prefix, part, target, 'mb'), entry)
    mark_ready(prefix, part, now, target)
    return 1
  end
  local z = pkey(prefix, part, 'due')
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  local added
  if is_member(id) then
    -- A reminder's occurrence: the member alone, at its (new) due time; one per reminder.
    -- 'nx' (recover --reminders): a live turn's own arm, if any, stands.
    if entry == 'nx' then
      added = redis.call('ZADD', z, 'NX', due, id)
    else
      added = redis.call('ZADD', z, 'CH', due, id)  -- moved earlier: a new earliest, maybe
    end
  else
    -- The body before the id: an id in the queue always has its body (the same for the
    -- same id, so writing it again changes nothing).
    redis.call('HSET', mkey(prefix, part, id), id, target .. '\n' .. string.sub(entry, 33))
    added = redis.call('ZADD', z, 'NX', due, id)
  end
  if added == 1 then
    -- A new earliest due time in this partition: pollers must look at it again, and an
    -- idle worker blocked until a later due time must wake.
    if first[2] == nil or tonumber(due) < tonumber(first[2]) then
      SIG.due[tonumber(part)] = true
    end
  end
  return 1
end

-- Cancel a deferred message wherever it is held: it is dropped when it lands in Redis.
-- Returns the tombstone's previous value: false (none), 'c' (cancelled before) or
-- 'l:<due ms>' (landed already).
local function tombstone(prefix, part, id, ttl_ms)
  return redis.call('SET', pkey(prefix, part, 'tomb:' .. id), 'c', 'PX', ttl_ms, 'GET')
end

-- Remove a deferred message not yet promoted; 1 if it was pending.
local function unschedule(prefix, part, id)
  take_body(prefix, part, id)
  return redis.call('ZREM', pkey(prefix, part, 'due'), id)
end

-- Take P:{g}:awake for wake_ms: 1 if taken (the caller starts a drain). Else a drain runs or
-- is on its way: poke it, so that one deciding to rest looks again.
local function claim_awake(prefix, wake_ms)
  if redis.call('SET', gkey(prefix, 'awake'), 1, 'NX', 'PX', wake_ms) then
    return 1
  end
  redis.call('SET', gkey(prefix, 'poke'), 1, 'PX', 60000)
  return 0
end
