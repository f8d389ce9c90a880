-- Label joins, shared by apply.lua and feedback.lua (a library: no KEYS, no ARGV).
-- Two generations per kind, rotated by size or age; join_category decodes what waits for
-- a label (bucket, primary label, candidate label, candidate error, both confidences in
-- micro-units) into its counters.

local function join_gens(base, rotate, cap, ttl, now)
  local meta = base .. ':gen'
  local gen = tonumber(redis.call('HGET', meta, 'n') or '0')
  local born = tonumber(redis.call('HGET', meta, 't') or now)
  local cur = base .. ':' .. gen
  if rotate and (redis.call('HLEN', cur) >= cap or now - born >= ttl) then
    gen = gen + 1
    redis.call('HSET', meta, 'n', gen, 't', now)
    redis.call('DEL', base .. ':' .. (gen - 2))
    cur = base .. ':' .. gen
  elseif rotate and redis.call('HEXISTS', meta, 't') == 0 then
    redis.call('HSET', meta, 'n', gen, 't', now)
  end
  return cur, base .. ':' .. (gen - 1), meta
end

local function join_parts(enc)
  local sep = string.char(31)
  local parts, start = {}, 1
  while true do
    local i = string.find(enc, sep, start, true)
    if not i then table.insert(parts, string.sub(enc, start)); return parts end
    table.insert(parts, string.sub(enc, start, i - 1))
    start = i + 1
  end
end

-- Calibration counters of one side: labelled rows, their confidence (micro-units) and the
-- right ones, per confidence decile (k<side>n:d k<side>s:d k<side>r:d). Values stored
-- before the confidences were part of the join (4 parts) count no calibration.
local function join_calibrate(key, side, micro, right)
  local m = tonumber(micro or '')
  if not m then return end
  local d = math.max(0, math.min(9, math.floor(m / 100000)))
  redis.call('HINCRBY', key, 'k' .. side .. 'n:' .. d, 1)
  redis.call('HINCRBY', key, 'k' .. side .. 's:' .. d, m)
  if right then redis.call('HINCRBY', key, 'k' .. side .. 'r:' .. d, 1) end
end

-- Per true class (at most 50 per bucket, the rest under 'other'): labelled rows, both
-- right, only the primary right, only the candidate right (ky n/a/b/c): recall per class.
local function join_class(key, label, p_right, c_right)
  local sep = string.char(31)
  local class = label
  if redis.call('HEXISTS', key, 'kyn' .. sep .. class) == 0 then
    if tonumber(redis.call('HGET', key, 'kyclasses') or '0') >= 50 then
      class = 'other'
    else
      redis.call('HINCRBY', key, 'kyclasses', 1)
    end
  end
  redis.call('HINCRBY', key, 'kyn' .. sep .. class, 1)
  local cell = nil
  if p_right and c_right then cell = 'kya'
  elseif p_right then cell = 'kyb'
  elseif c_right then cell = 'kyc' end
  if cell then redis.call('HINCRBY', key, cell .. sep .. class, 1) end
end

-- A numeric ground truth (label text: char 30, then the number): each side's error from
-- the scores waiting in parts 7 and 8 (gn, gerr, and float sums gap gac gd gdd gsp gsc).
local function join_regress(key, parts, truth)
  local y = tonumber(string.sub(truth, 2))
  local p = tonumber(parts[7] or '')
  if not y or not p then return end
  local c = tonumber(parts[8] or '')
  redis.call('HINCRBY', key, 'gn', 1)
  if parts[4] ~= '0' or not c then
    redis.call('HINCRBY', key, 'gerr', 1)
    return
  end
  local ep, ec = math.abs(p - y), math.abs(c - y)
  local d = ec - ep
  redis.call('HINCRBYFLOAT', key, 'gap', ep)
  redis.call('HINCRBYFLOAT', key, 'gac', ec)
  redis.call('HINCRBYFLOAT', key, 'gd', d)
  redis.call('HINCRBYFLOAT', key, 'gdd', d * d)
  redis.call('HINCRBYFLOAT', key, 'gsp', ep * ep)
  redis.call('HINCRBYFLOAT', key, 'gsc', ec * ec)
end

-- Count one joined label in `key` and return its cell (nil for a numeric truth): the 2x2 cell, whether the two models agreed (lagree:
-- are labelled requests like the rest?) and both sides' calibration counters.
local function join_count(key, enc, label)
  local parts = join_parts(enc)
  if string.byte(label, 1) == 30 then
    join_regress(key, parts, label)
    return
  end
  local p_right = parts[2] == label
  local c_ok = parts[4] == '0'
  local c_right = c_ok and parts[3] == label
  local field
  if p_right and c_right then field = 'la'
  elseif p_right then field = 'lb'
  elseif c_right then field = 'lc'
  else field = 'ld' end
  redis.call('HINCRBY', key, field, 1)
  if c_ok and parts[2] == parts[3] then redis.call('HINCRBY', key, 'lagree', 1) end
  join_class(key, label, p_right, c_right)
  join_calibrate(key, 'p', parts[5], p_right)
  if c_ok then join_calibrate(key, 'c', parts[6], c_right) end
  return field
end

-- A labelled negative flip (primary right, candidate wrong) remembered for the failure
-- catalog (`shadowtrial export NAME --flips`): newest first, at most `cap`, in the
-- candidate's slot (preds_base .. ':flips', common.keys.Keys.flips).
local function join_flip(preds_base, rid, label, cap, ttl)
  local key = preds_base .. ':flips'
  redis.call('LPUSH', key, rid .. string.char(31) .. label)
  redis.call('LTRIM', key, 0, cap - 1)
  redis.call('EXPIRE', key, 4 * ttl)
end

local function join_bucket(enc)
  return join_parts(enc)[1]
end
