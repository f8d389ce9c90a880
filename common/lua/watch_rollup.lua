-- Replace one hour's watch buckets by their merge (computed by the caller from what it
-- read), atomically, and only if none changed since: each bucket's `i#req|l#n` must still
-- be what was read (a fold or a label in between makes this refuse; the next round retries).
-- USES: watchmerge
-- KEYS: index hour *buckets
-- ARGV: member hour_start ttl max_features max_categories n_buckets *checks_then_payload
-- checks_then_payload: per bucket its start and the `i#req|l#n` read ('' when absent); then
-- the hour's payload (watchmerge), merged into the hour key.

local index, hour = KEYS[1], KEYS[2]
local member, hour_start, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local max_features, max_categories = tonumber(ARGV[4]), tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local pos = 7
for b = 1, n do
  local seen = (redis.call('HGET', KEYS[2 + b], 'i#req') or '') .. '|'
    .. (redis.call('HGET', KEYS[2 + b], 'l#n') or '')
  if seen ~= ARGV[pos + 1] then return 0 end
  pos = pos + 2
end
watch_merge(hour, pos, max_features, max_categories)
redis.call('EXPIRE', hour, ttl)
pos = 7
for b = 1, n do
  redis.call('DEL', KEYS[2 + b])
  redis.call('ZREM', index, ARGV[pos])
  pos = pos + 2
end
redis.call('ZADD', index, hour_start, member)
return 1
