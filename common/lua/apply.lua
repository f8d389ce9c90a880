-- Apply one batch of one candidate's stream and acknowledge it, exactly once: (a) every id
-- must still be pending for this consumer (else the missing ids are returned and nothing
-- is written), (b) counter increments per bucket, (c) label joins, (d) drill-down
-- samples, (e) XACK.
-- USES: join
-- KEYS: stream index divergent recent unparseable contract *buckets
-- ARGV: group consumer n_ids ttl index_min samples_cap id_min id_max preds_base labels_base join_cap join_ttl now *batch
-- batch: the ids; n_buckets, then per bucket start, n_int, (field, value)*, n_float,
-- (field, value)*; n_joins, then (request id, encoded predictions, bucket position)*;
-- per sample kind n, then the n samples.

local stream, index = KEYS[1], KEYS[2]
local group, consumer = ARGV[1], ARGV[2]
local n_ids = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local index_min = ARGV[5]
local samples_cap = tonumber(ARGV[6])
local id_min, id_max = ARGV[7], ARGV[8]
local preds_base, labels_base = ARGV[9], ARGV[10]
local join_cap, join_ttl, now = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local pos = 14
local ids = {}
for i = 1, n_ids do ids[i] = ARGV[pos]; pos = pos + 1 end

-- (a) every id must still be pending for this consumer
local pending = redis.call('XPENDING', stream, group, id_min, id_max, n_ids + 64, consumer)
local mine = {}
for _, entry in ipairs(pending) do mine[entry[1]] = true end
local missing = {}
for _, id in ipairs(ids) do
  if not mine[id] then missing[#missing + 1] = id end
end
if #missing > 0 then return missing end

-- (b) counter increments per bucket
local n_buckets = tonumber(ARGV[pos]); pos = pos + 1
for b = 1, n_buckets do
  local key = KEYS[6 + b]
  local start = ARGV[pos]; pos = pos + 1
  local n_int = tonumber(ARGV[pos]); pos = pos + 1
  for _ = 1, n_int do
    redis.call('HINCRBY', key, ARGV[pos], ARGV[pos + 1]); pos = pos + 2
  end
  local n_float = tonumber(ARGV[pos]); pos = pos + 1
  for _ = 1, n_float do
    redis.call('HINCRBYFLOAT', key, ARGV[pos], ARGV[pos + 1]); pos = pos + 2
  end
  redis.call('EXPIRE', key, ttl)
  redis.call('ZADD', index, start, start)
end
redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. index_min)

-- (c) label joins: (request id, encoded predictions, bucket position)
local n_joins = tonumber(ARGV[pos]); pos = pos + 1
if n_joins > 0 then
  local pcur, pprev, pmeta = join_gens(preds_base, true, join_cap, join_ttl, now)
  local lcur, lprev = join_gens(labels_base, false, join_cap, join_ttl, now)
  -- labels rarely come first: look them up only when some are waiting
  local waiting = redis.call('EXISTS', lcur, lprev) > 0
  local older = redis.call('EXISTS', pprev) == 1
  local stored = 0
  for _ = 1, n_joins do
    local rid, enc, b = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2]); pos = pos + 3
    local where, label = lcur, false
    if waiting then
      label = redis.call('HGET', lcur, rid)
      if not label then where = lprev; label = redis.call('HGET', lprev, rid) end
    end
    if label then
      redis.call('HDEL', where, rid)
      if join_count(KEYS[6 + b], enc, label) == 'lb' then
        join_flip(preds_base, rid, label, join_cap, join_ttl)
      end
    elseif (older and redis.call('HEXISTS', pprev, rid) == 1)
        or redis.call('HSETNX', pcur, rid, enc) == 0 then
      -- a request id already waiting (a client reusing ids): the first pair keeps the
      -- join, this one is only counted, so a repeated id cannot change labelled accuracy
      redis.call('HINCRBY', KEYS[6 + b], 'label_dup', 1)
    else
      stored = stored + 1
    end
  end
  if stored > 0 then
    redis.call('EXPIRE', pcur, 2 * join_ttl)
    redis.call('EXPIRE', pmeta, 4 * join_ttl)
  end
end

-- (d) drill-down samples, newest first, capped
for s = 1, 4 do
  local n = tonumber(ARGV[pos]); pos = pos + 1
  if n > 0 then
    for _ = 1, n do redis.call('LPUSH', KEYS[2 + s], ARGV[pos]); pos = pos + 1 end
    redis.call('LTRIM', KEYS[2 + s], 0, samples_cap - 1)
    redis.call('EXPIRE', KEYS[2 + s], ttl)
  end
end

-- (e) acknowledge (in chunks: unpack has a stack limit)
for i = 1, #ids, 1000 do
  redis.call('XACK', stream, group, unpack(ids, i, math.min(i + 999, #ids)))
end
return {}
