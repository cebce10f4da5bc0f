-- promote: move due deferred messages of one partition into their actors' mailboxes, on a
-- cluster (a single node promotes in poll.lua).
-- KEYS[1] P:due  KEYS[2] P:ready  KEYS[3] P:paused, then every other key it touches: the
-- messages' buckets and their actors' mailboxes and done sets, as the caller read them, so
-- that a slot being moved to another node refuses the script whole (TRYAGAIN or ASK)
-- instead of stopping it at a key the node no longer holds.
-- ARGV[1] prefix  ARGV[2] inline signals  ARGV[3] partition  ARGV[4] now ms  then ids
-- Atomic and idempotent: each id leaves the delay queue exactly once, and only when due;
-- processed ids are dropped. Returns {signals, promoted}.
local prefix, part, now = ARGV[1], ARGV[3], tonumber(ARGV[4])
local promoted = 0
for i = 5, #ARGV do
  local id = ARGV[i]
  local due = redis.call('ZSCORE', KEYS[1], id)
  if due and tonumber(due) <= now then
    local v = take_body(prefix, part, id)
    redis.call('ZREM', KEYS[1], id)
    if is_member(id) then
      local target, mid, entry = occurrence_of(id, due, part)
      if target then
        promoted = promoted + deliver(prefix, timely(due), target, part, mid, '', entry)
      end
    elseif v then
      local nl = string.find(v, '\n', 1, true)
      promoted = promoted + deliver(prefix, timely(due), string.sub(v, 1, nl - 1), part, id, '',
                                    id .. string.sub(v, nl + 1))
    end
  end
end
return {finish_signals(prefix, ARGV[2]), promoted}
