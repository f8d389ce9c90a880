-- Library: merge one bucket's watch payload (ARGV from `pos`) into the hash `key`, with
-- the caps applied in Redis, so a bucket stays bounded however many batches add to it:
-- at most `max_features` features per tag (the rest counted in <tag>#over_cap) and
-- `max_categories` values per feature (the rest under <other>). Field layout: see
-- analysis/watch_store.py. Returns the position after the payload.
-- payload: n_scalars, (field, n)*, n_features, per feature: tag, fname, present, null,
-- nan, invalid, sum, lo, hi, n_bins, (bin, n)*, n_cats, (value, n)*.

local WATCH_OTHER = '<other>'

local function watch_keep(key, tag, name, present, max_features)
  if redis.call('HEXISTS', key, name .. 'p') == 1 then return true end
  if tonumber(redis.call('HGET', key, tag .. '#nf') or '0') < max_features then
    redis.call('HINCRBY', key, tag .. '#nf', 1)
    return true
  end
  redis.call('HINCRBY', key, tag .. '#over_cap', present)
  return false
end

local function watch_extreme(key, field, value, lower)
  if value == '' then return end
  local cur = redis.call('HGET', key, field)
  local x = tonumber(value)
  if not cur or (lower and x < tonumber(cur)) or ((not lower) and x > tonumber(cur)) then
    redis.call('HSET', key, field, value)
  end
end

local function watch_category(key, name, value, n, max_categories)
  local field = name .. 'c' .. value
  if value ~= WATCH_OTHER and redis.call('HEXISTS', key, field) == 0 then
    if tonumber(redis.call('HGET', key, name .. 'k') or '0') < max_categories then
      redis.call('HINCRBY', key, name .. 'k', 1)
    else
      field = name .. 'c' .. WATCH_OTHER
    end
  end
  redis.call('HINCRBY', key, field, n)
end

-- One labelled watched answer into the bucket `key`: l#n, l#right, and per true class
-- l#t:<class> / l#r:<class> (at most max_classes classes, the rest under <other>).
local function watch_count_label(key, predicted, label, max_classes)
  local class = label
  if redis.call('HEXISTS', key, 'l#t:' .. class) == 0 then
    if tonumber(redis.call('HGET', key, 'l#nc') or '0') < max_classes then
      redis.call('HINCRBY', key, 'l#nc', 1)
    else
      class = WATCH_OTHER
    end
  end
  redis.call('HINCRBY', key, 'l#n', 1)
  redis.call('HINCRBY', key, 'l#t:' .. class, 1)
  if predicted == label then
    redis.call('HINCRBY', key, 'l#right', 1)
    redis.call('HINCRBY', key, 'l#r:' .. class, 1)
  end
end

-- The value waiting under `rid` in the current generation `cur` or the previous `prev`,
-- removed (so it is used once); false when there is none.
local function watch_take(cur, prev, rid)
  for _, key in ipairs({cur, prev}) do
    local value = redis.call('HGET', key, rid)
    if value then
      redis.call('HDEL', key, rid)
      return value
    end
  end
  return false
end

-- Leave `value` waiting under `rid` (the first one wins), unless the generation is full.
local function watch_wait(key, rid, value, cap, ttl)
  if redis.call('HLEN', key) >= cap then return false end
  redis.call('HSETNX', key, rid, value)
  redis.call('EXPIRE', key, ttl)
  return true
end

local function watch_merge(key, pos, max_features, max_categories)
  local n_scalars = tonumber(ARGV[pos]); pos = pos + 1
  for _ = 1, n_scalars do
    redis.call('HINCRBY', key, ARGV[pos], ARGV[pos + 1]); pos = pos + 2
  end
  local n_features = tonumber(ARGV[pos]); pos = pos + 1
  for _ = 1, n_features do
    local tag, name = ARGV[pos], ARGV[pos] .. ARGV[pos + 1]
    local present = ARGV[pos + 2]
    local counts = {n = ARGV[pos + 3], x = ARGV[pos + 4], i = ARGV[pos + 5]}
    local sum, lo, hi = ARGV[pos + 6], ARGV[pos + 7], ARGV[pos + 8]
    local n_bins = tonumber(ARGV[pos + 9])
    local bins_at = pos + 10
    local n_cats = tonumber(ARGV[bins_at + 2 * n_bins])
    local cats_at = bins_at + 2 * n_bins + 1
    pos = cats_at + 2 * n_cats
    if watch_keep(key, tag, name, present, max_features) then
      redis.call('HINCRBY', key, name .. 'p', present)
      for part, n in pairs(counts) do
        if n ~= '0' then redis.call('HINCRBY', key, name .. part, n) end
      end
      -- a sum beyond a double's range is refused by Redis: the mean is lost, not the batch
      if sum ~= '0' then redis.pcall('HINCRBYFLOAT', key, name .. 's', sum) end
      watch_extreme(key, name .. '<', lo, true)
      watch_extreme(key, name .. '>', hi, false)
      for i = 0, n_bins - 1 do
        redis.call('HINCRBY', key, name .. 'b' .. ARGV[bins_at + 2 * i], ARGV[bins_at + 2 * i + 1])
      end
      for i = 0, n_cats - 1 do
        watch_category(key, name, ARGV[cats_at + 2 * i], ARGV[cats_at + 2 * i + 1], max_categories)
      end
    end
  end
  return pos
end
