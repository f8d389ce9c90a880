-- Move every listed bucket's counters into the hour's rollup hash and delete the bucket,
-- atomically: a report sees each count in exactly one of them. A bucket recreated later
-- by a late record is simply rolled up again.
-- KEYS: index hour *buckets
-- ARGV: member hour_start ttl n_float *floats_then_starts

local index, hour = KEYS[1], KEYS[2]
local n_float = tonumber(ARGV[4])
local floats = {}
for i = 1, n_float do floats[ARGV[4 + i]] = true end
local moved = 0
for k = 3, #KEYS do
  local fields = redis.call('HGETALL', KEYS[k])
  for i = 1, #fields, 2 do
    if floats[fields[i]] then
      redis.call('HINCRBYFLOAT', hour, fields[i], fields[i + 1])
    else
      redis.call('HINCRBY', hour, fields[i], fields[i + 1])
    end
  end
  if #fields > 0 then moved = moved + 1 end
  redis.call('DEL', KEYS[k])
  redis.call('ZREM', index, ARGV[4 + n_float + k - 2])
end
if redis.call('EXISTS', hour) == 1 then
  redis.call('ZADD', index, ARGV[2], ARGV[1])
  redis.call('EXPIRE', hour, ARGV[3])
end
return moved
