-- A pending entry its stream no longer holds (trimmed before any worker applied it):
-- acknowledge it and count it `trimmed` in the bucket of now, exactly once. Guarded and
-- atomic: only while the entry is still missing from the stream and pending in the group,
-- so two workers taking over the same idle entries count it once. Called before XCLAIM,
-- which on Redis 7 would silently drop a deleted entry from the pending list (on 6.2 it
-- returns the id): the same count on both.
-- KEYS: stream bucket index
-- ARGV: group id start ttl count
-- count: 1 to count it `trimmed` (a pair), 0 only to acknowledge it (a watched record).

local stream, bucket, index = KEYS[1], KEYS[2], KEYS[3]
local group, id = ARGV[1], ARGV[2]
if #redis.call('XRANGE', stream, id, id, 'COUNT', 1) > 0 then return 0 end
if #redis.call('XPENDING', stream, group, id, id, 1) == 0 then return 0 end
redis.call('XACK', stream, group, id)
if ARGV[5] == '0' then return 1 end
redis.call('HINCRBY', bucket, 'trimmed', 1)
redis.call('EXPIRE', bucket, ARGV[4])
redis.call('ZADD', index, ARGV[3], ARGV[3])
return 1
