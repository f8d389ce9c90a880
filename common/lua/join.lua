-- Label joins, shared by apply.lua and feedback.lua (a library: no KEYS, no ARGV).
-- Two generations per kind, rotated by size or age; join_category decodes what waits for
-- a label (bucket, primary label, candidate label, candidate error) into its counter.

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

local function join_category(enc, label)
  local sep = string.char(31)
  local a = string.find(enc, sep, 1, true)
  local b = string.find(enc, sep, a + 1, true)
  local c = string.find(enc, sep, b + 1, true)
  local bucket = string.sub(enc, 1, a - 1)
  local plabel = string.sub(enc, a + 1, b - 1)
  local clabel = string.sub(enc, b + 1, c - 1)
  local cerr = string.sub(enc, c + 1)
  local p_right = plabel == label
  local c_right = cerr == '0' and clabel == label
  local field
  if p_right and c_right then field = 'la'
  elseif p_right then field = 'lb'
  elseif c_right then field = 'lc'
  else field = 'ld' end
  return bucket, field
end
