-- Add accounting counts to one bucket, keep it as long as the worker keeps its own, and
-- index it so a window finds it even without pairs. Atomic: an hourly rollup running at
-- the same time never leaves a bucket without its index entry or an entry without a bucket.
-- KEYS: bucket index
-- ARGV: start ttl *increments

for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1])
return 1
