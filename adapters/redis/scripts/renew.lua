-- renew: extend a lease we still hold.
-- KEYS[1] P:{A}:lease  KEYS[2] P:leases
-- ARGV[1] token  ARGV[2] lease ms  ARGV[3] now ms  ARGV[4] actor key
-- Returns 1 if extended, 0 if the lease is no longer ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[2]), ARGV[4])
return 1
