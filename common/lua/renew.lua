-- Take or renew a lease: 1 when `owner` holds the lock for another `ttl_ms`, else 0.
-- KEYS: lock
-- ARGV: owner ttl_ms

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
