-- renew: extend a lease we still hold.
-- KEYS[1] P:{A}:lease  KEYS[2] P:leases
-- ARGV[1] token  ARGV[2] lease ms  ARGV[3] now ms  ARGV[4] actor key
-- Returns 1 if extended, 0 if the lease is no longer ours.
if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] or redis.call('HEXISTS', KEYS[1], 'c') == 1 then
  return 0  -- not ours, or ours and already committed (only its receipt is left)
end
local expiry = tonumber(ARGV[3]) + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'e', expiry)
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]) + 60000)
redis.call('ZADD', KEYS[2], expiry, ARGV[4])
return 1
