-- A ground-truth label for a watched answer (POST /v1/feedback): counted once in the
-- bucket of its record (or that bucket's hourly rollup): l#n labelled, l#right correct,
-- and per true class l#t:<class> / l#r:<class> (at most max_classes classes per bucket,
-- the rest under <other>). The waiting prediction is removed, so a repeated label is
-- not counted twice. Returns joined, none (nothing waiting) or expired.
-- KEYS: preds
-- ARGV: base request_id label max_classes rollup

local preds = KEYS[1]
local base, rid, label = ARGV[1], ARGV[2], ARGV[3]
local max_classes, rollup = tonumber(ARGV[4]), tonumber(ARGV[5])
local value = redis.call('HGET', preds, rid)
if not value then return 'none' end
redis.call('HDEL', preds, rid)
local sep = string.find(value, '\31', 1, true)
if not sep then return 'none' end
local start = tonumber(string.sub(value, 1, sep - 1))
local predicted = string.sub(value, sep + 1)
local key = base .. start
if redis.call('EXISTS', key) == 0 then
  key = base .. 'h' .. (start - start % rollup)
  if redis.call('EXISTS', key) == 0 then return 'expired' end
end
local class = label
if redis.call('HEXISTS', key, 'l#t:' .. class) == 0 then
  if tonumber(redis.call('HGET', key, 'l#nc') or '0') < max_classes then
    redis.call('HINCRBY', key, 'l#nc', 1)
  else
    class = '<other>'
  end
end
redis.call('HINCRBY', key, 'l#n', 1)
redis.call('HINCRBY', key, 'l#t:' .. class, 1)
if predicted == label then
  redis.call('HINCRBY', key, 'l#right', 1)
  redis.call('HINCRBY', key, 'l#r:' .. class, 1)
end
return 'joined'
