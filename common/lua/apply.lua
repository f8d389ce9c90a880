-- Apply one batch of one candidate's stream and acknowledge it, exactly once: (a) every id
-- must still be pending for this consumer (else the missing ids are returned and nothing
-- is written), (b) counter increments per bucket, (c) label joins, (d) drill-down
-- samples, (e) XACK.
-- USES: join
-- KEYS: stream index divergent recent unparseable contract *buckets
-- ARGV: group consumer ttl index_min samples_cap id_min id_max preds_base labels_base join_cap join_ttl now batch *samples
-- batch: one JSON object (one argument, decoded in C, instead of thousands that each cost
-- the worker a conversion): "ids", the entry ids; "buckets", per bucket (in KEYS order)
-- [start, int fields, their increments, float fields, their increments], every number as
-- text (Lua numbers are doubles: text keeps 64-bit counters exact);
-- "joins", (request id, encoded predictions, bucket position)* flat.
-- samples: per sample kind n, then the n samples (raw bytes, pushed as they are).

local stream, index = KEYS[1], KEYS[2]
local group, consumer = ARGV[1], ARGV[2]
local ttl = tonumber(ARGV[3])
local index_min = ARGV[4]
local samples_cap = tonumber(ARGV[5])
local id_min, id_max = ARGV[6], ARGV[7]
local preds_base, labels_base = ARGV[8], ARGV[9]
local join_cap, join_ttl, now = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local batch = cjson.decode(ARGV[13])
local pos = 14
local ids = batch.ids
local n_ids = #ids

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
for b, bucket in ipairs(batch.buckets) do
  local key = KEYS[6 + b]
  local start, ints, int_by, floats, float_by = bucket[1], bucket[2], bucket[3], bucket[4], bucket[5]
  for i = 1, #ints do redis.call('HINCRBY', key, ints[i], int_by[i]) end
  for i = 1, #floats do redis.call('HINCRBYFLOAT', key, floats[i], float_by[i]) end
  redis.call('EXPIRE', key, ttl)
  redis.call('ZADD', index, start, start)
end
redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. index_min)

-- (c) label joins: (request id, encoded predictions, bucket position)
local joins = batch.joins
if #joins > 0 then
  local pcur, pprev, pmeta = join_gens(preds_base, true, join_cap, join_ttl, now)
  local lcur, lprev = join_gens(labels_base, false, join_cap, join_ttl, now)
  -- labels rarely come first: look them up only when some are waiting
  local waiting = redis.call('EXISTS', lcur, lprev) > 0
  local older = redis.call('EXISTS', pprev) == 1
  local stored = 0
  for j = 1, #joins, 3 do
    local rid, enc, b = joins[j], joins[j + 1], joins[j + 2]
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
