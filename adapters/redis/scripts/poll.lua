-- poll: the upkeep of partitions, then pop their ready actors. A cluster runs one per
-- partition, declaring its keys; a single node one for many, which builds their names.
-- KEYS (cluster) [1] P:{pn}:leases  [2] P:{pn}:ready  [3] P:{pn}:paused  [4] P:{pn}:due
--   [5] P:{pn}:outboxes  [6] P:{pn}:polled:<token> (with a token)
-- ARGV[1] prefix  ARGV[2] inline signals (a single node)  ARGV[3] now ms  ARGV[4] lease ms
-- ARGV[5] the round's token ('' for none): the actors it pops are remembered under it for
--   the reservation's time, so that a poll retried after its answer was lost (or a round
--   resumed after a backend error) gets them again instead of leaving them reserved to
--   nobody until it expires
-- ARGV[6] most deferred messages to promote per partition (0 on a cluster: promote.lua,
--   which declares the keys of the messages' actors, does it)
-- ARGV[7] how long an outbox handed out for delivery is left to that poller before another
--   takes it, ms
-- ARGV[8] ms for which this poller counts as a running drain (P:{g}:awake; 0: it does not;
--   a single node only: on a cluster the key is in another slot and the caller sets it)
-- then pairs: partition n, max actors to pop from it (0: upkeep only)
-- Returns {signals, then per partition: promoted, next ms, ready left, the oldest ready time
-- left (-1: none), n popped, n outbox actors, actor..., outbox actor...}; next ms is when the
-- partition next needs upkeep (a message comes due, a lease expires, a backoff ends, an
-- outbox is left undelivered), -1 for never.
-- An expired lease (holder crashed or frozen) puts its actor back in the ready set; the next
-- holder's begin moves the dead holder's in-flight entries back to the mailbox.
local prefix, now, lease_ms, token = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local out = {''}
local leftover = {}

local function poll_part(part, pops)
  local K = KEYS
  if #KEYS == 0 then
    K = {pkey(prefix, part, 'leases'), pkey(prefix, part, 'ready'),
         pkey(prefix, part, 'paused'), pkey(prefix, part, 'due'),
         pkey(prefix, part, 'outboxes')}
  end
  -- The earliest score of each upkeep set (leases, paused, due, outboxes): the work below
  -- runs only where one is due, and the partition's next upkeep time comes from them.
  local first = {}
  local function earliest(k)
    local got
    if k == 3 then
      -- An actor resting in the long-work lane (LANE_MS) never comes due here.
      got = redis.call('ZRANGEBYSCORE', K[k], '-inf', '(' .. string.format('%d', LANE_MS),
                       'WITHSCORES', 'LIMIT', 0, 1)
    else
      got = redis.call('ZRANGE', K[k], 0, 0, 'WITHSCORES')
    end
    first[k] = got[2] and tonumber(got[2]) or nil
  end
  for _, k in ipairs({1, 3, 4, 5}) do
    earliest(k)
  end
  local function due_now(k)
    return first[k] ~= nil and first[k] <= now
  end
  if due_now(1) then
    local expired = redis.call('ZRANGEBYSCORE', K[1], '-inf', now, 'LIMIT', 0, 100)
    for _, actor in ipairs(expired) do
      -- The lease hash and the leases set move together (begin, renew, commit); a single
      -- node checks the hash as well. A cluster script touches only the keys it declares,
      -- so that a slot being moved refuses it whole.
      local expiry = 0
      if ARGV[2] == '1' then
        expiry = tonumber(redis.call('HGET', akey(prefix, part, actor, 'lease'), 'e') or '0')
      end
      if expiry > now then
        redis.call('ZADD', K[1], expiry, actor)
      else
        redis.call('ZREM', K[1], actor)
        mark_ready(prefix, part, now, actor)
      end
    end
    earliest(1)
  end
  -- Actors that waited out a retry's backoff are ready again.
  if due_now(3) then
    local rested = redis.call('ZRANGEBYSCORE', K[3], '-inf', now, 'LIMIT', 0, 100)
    for _, actor in ipairs(rested) do
      redis.call('ZREM', K[3], actor)
      MARKED[part .. ' ' .. actor] = nil  -- found resting above, if its lease expired too
      mark_ready(prefix, part, now, actor)
    end
    earliest(3)
  end
  -- Due deferred messages into their actors' mailboxes, each exactly once (processed ids are
  -- dropped). An actor whose message came due is taken before those made ready by immediate
  -- sends (timely in lib.lua), in due order.
  local promoted = 0
  if tonumber(ARGV[6]) > 0 and due_now(4) then
    local due = redis.call('ZRANGEBYSCORE', K[4], '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[6])
    for i = 1, #due, 2 do
      local id = due[i]
      local v = take_body(prefix, part, id)
      redis.call('ZREM', K[4], id)
      if is_member(id) then
        local target, mid, entry = occurrence_of(id, due[i + 1], part)
        if target then
          promoted = promoted + deliver(prefix, timely(due[i + 1]), target, part, mid, '', entry)
        end
      elseif v then
        local nl = string.find(v, '\n', 1, true)
        promoted = promoted + deliver(prefix, timely(due[i + 1]), string.sub(v, 1, nl - 1),
                                      part, id, '', id .. string.sub(v, nl + 1))
      end
    end
    earliest(4)
  end
  -- Outboxes whose committer did not deliver them in time: handed to this poller.
  local stale = {}
  if due_now(5) then
    stale = redis.call('ZRANGEBYSCORE', K[5], '-inf', now, 'LIMIT', 0, 16)
    for _, actor in ipairs(stale) do
      redis.call('ZADD', K[5], now + tonumber(ARGV[7]), actor)
    end
    earliest(5)
  end
  local popped = {}
  local memo = token ~= '' and (K[6] or pkey(prefix, part, 'polled:' .. token)) or nil
  if memo and redis.call('EXISTS', memo) == 1 then
    popped = redis.call('LRANGE', memo, 0, -1)
  elseif pops > 0 then
    local got = redis.call('ZPOPMIN', K[2], pops)
    -- Popped actors count as leased until begin takes their real lease: a drainer that dies
    -- in between leaves them to the recovery above, not stranded outside the ready set.
    local reserved = now + lease_ms
    for i = 1, #got, 2 do
      redis.call('ZADD', K[1], reserved, got[i])
      popped[#popped + 1] = got[i]
    end
    if memo and #popped > 0 then
      chunked('RPUSH', memo, popped)
      -- As long as the reservation: a round cut short is resumed under its token.
      redis.call('PEXPIRE', memo, lease_ms)
    end
  end
  local left = redis.call('ZCARD', K[2])
  local head = redis.call('ZRANGE', K[2], 0, 0, 'WITHSCORES')
  if left > 0 then
    leftover[tonumber(part)] = true
  end
  if #popped > 0 and (first[1] == nil or now + lease_ms < first[1]) then
    first[1] = now + lease_ms  -- the reservations just made
  end
  local next_ms = -1
  for _, k in ipairs({1, 3, 4, 5}) do
    if first[k] ~= nil and (next_ms < 0 or first[k] < next_ms) then
      next_ms = first[k]
    end
  end
  for _, v in ipairs({promoted, next_ms, left, tonumber(head[2] or '-1'), #popped, #stale}) do
    out[#out + 1] = v
  end
  for _, actor in ipairs(popped) do
    out[#out + 1] = actor
  end
  for _, actor in ipairs(stale) do
    out[#out + 1] = actor
  end
end

if ARGV[2] == '1' and tonumber(ARGV[8]) > 0 then
  redis.call('SET', gkey(prefix, 'awake'), 1, 'PX', ARGV[8])
end
for i = 9, #ARGV, 2 do
  poll_part(ARGV[i], tonumber(ARGV[i + 1]))
end
-- Work left over should wake another worker to help; what this poll made ready and took
-- itself needs no one else. Of the partitions with work left, those where this poll made
-- actors ready (a lease recovered, a backoff over, a message due) get a new hint; the
-- others keep theirs.
local ready = {}
for p, _ in pairs(leftover) do
  if SIG.ready[p] then
    ready[p] = true
  else
    SIG.left[p] = true
  end
end
SIG.ready = ready
out[1] = finish_signals(prefix, ARGV[2])
return out
