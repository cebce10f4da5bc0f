-- push: deliver messages into one partition (a cluster runs one per partition; a single node
-- one for all): sends from outside a turn, or a turn's outbox on a cluster.
-- KEYS[1] P:{pn}:ready of the partition
-- ARGV[1] prefix  ARGV[2] inline signals ('1'/'0')  ARGV[3] now ms  ARGV[4] wake ms (0: the
--   sender starts no drain; only with inline signals, else signal.lua decides)
-- then groups of 5: target, partition, id, due ms or '', entry
-- Returns {signals, messages accepted (ids already processed are dropped), 1 if the sender
-- must start a drain}: actors are ready and no drain is running or on its way (P:{g}:awake),
-- which is then taken for the wake ms, so that a burst of sends starts one drain.
local n = 0
for i = 5, #ARGV, 5 do
  n = n + deliver(ARGV[1], ARGV[3], ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
end
local any_ready = SIG.any_ready
local sig = finish_signals(ARGV[1], ARGV[2])
local wake = 0
if ARGV[2] == '1' and any_ready and tonumber(ARGV[4]) > 0 then
  wake = claim_awake(ARGV[1], ARGV[4])
end
return {sig, n, wake}
