-- Fold one batch of the watch stream into its buckets and acknowledge it, exactly once
-- (as apply.lua): (a) every id must still be pending for this consumer, else the missing
-- ids are returned and nothing is written; (b) each bucket's payload merged (watchmerge,
-- caps applied here), expired and indexed; (c) each classified answer joined to a label
-- that came first (counted at once), or left to wait for its label (the first record of
-- a request id keeps it; a full generation is counted in l#join_full); (d) XACK.
-- USES: watchmerge
-- KEYS: stream index counts_index preds labels labels_prev *buckets
-- ARGV: group consumer n_ids ttl index_min max_features max_categories preds_cap preds_ttl max_classes id_min id_max *batch
-- batch: the ids; n_buckets, then per bucket start and its payload; n_preds, then
-- (request id, value, bucket position)*.

local stream, index, counts_index, preds = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local labels, labels_prev = KEYS[5], KEYS[6]
local group, consumer = ARGV[1], ARGV[2]
local n_ids, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local index_min = ARGV[5]
local max_features, max_categories = tonumber(ARGV[6]), tonumber(ARGV[7])
local preds_cap, preds_ttl = tonumber(ARGV[8]), tonumber(ARGV[9])
local max_classes = tonumber(ARGV[10])
local id_min, id_max = ARGV[11], ARGV[12]
local pos = 13
local ids = {}
for i = 1, n_ids do ids[i] = ARGV[pos]; pos = pos + 1 end

local pending = redis.call('XPENDING', stream, group, id_min, id_max, n_ids + 64, consumer)
local mine = {}
for _, entry in ipairs(pending) do mine[entry[1]] = true end
local missing = {}
for _, id in ipairs(ids) do
  if not mine[id] then missing[#missing + 1] = id end
end
if #missing > 0 then return missing end

local n_buckets = tonumber(ARGV[pos]); pos = pos + 1
for b = 1, n_buckets do
  local key = KEYS[6 + b]
  local start = ARGV[pos]; pos = pos + 1
  pos = watch_merge(key, pos, max_features, max_categories)
  redis.call('EXPIRE', key, ttl)
  redis.call('ZADD', index, start, start)
end
redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. index_min)
-- the proxies' accounting buckets of the watch expire by themselves; their index is kept here
redis.call('ZREMRANGEBYSCORE', counts_index, '-inf', '(' .. index_min)

local n_preds = tonumber(ARGV[pos]); pos = pos + 1
local early = n_preds > 0 and redis.call('EXISTS', labels, labels_prev) > 0
for _ = 1, n_preds do
  local rid, value, b = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2]); pos = pos + 3
  local label = early and watch_take(labels, labels_prev, rid)
  if label then
    local sep = string.find(value, '\31', 1, true)
    watch_count_label(KEYS[6 + b], string.sub(value, sep + 1), label, max_classes)
  elseif not watch_wait(preds, rid, value, preds_cap, preds_ttl) then
    redis.call('HINCRBY', KEYS[6 + b], 'l#join_full', 1)
  end
end

for i = 1, #ids, 1000 do
  redis.call('XACK', stream, group, unpack(ids, i, math.min(i + 999, #ids)))
end
return {}
