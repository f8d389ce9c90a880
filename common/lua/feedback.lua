-- Join one ground-truth label to a request's waiting predictions ('joined'), or keep it
-- waiting for them ('pending').
-- USES: join
-- KEYS: preds_gen labels_gen
-- ARGV: preds_base labels_base bucket_base request_id label cap ttl now rollup

local preds_base, labels_base, bucket_base = ARGV[1], ARGV[2], ARGV[3]
local rid, label = ARGV[4], ARGV[5]
local cap, ttl, now = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local rollup = tonumber(ARGV[9])
local pcur, pprev = join_gens(preds_base, false, cap, ttl, now)
local where = pcur
local enc = redis.call('HGET', pcur, rid)
if not enc then where = pprev; enc = redis.call('HGET', pprev, rid) end
if enc then
  redis.call('HDEL', where, rid)
  local bucket = join_bucket(enc)
  local key = bucket_base .. bucket
  if redis.call('EXISTS', key) == 0 then  -- rolled up into its hour, or expired
    local start = tonumber(bucket)
    key = bucket_base .. 'h' .. (start - start % rollup)
  end
  if redis.call('EXISTS', key) == 1 and join_count(key, enc, label) == 'lb' then
    join_flip(preds_base, rid, label, cap, ttl)
  end
  return 'joined'
end
local lcur, _, lmeta = join_gens(labels_base, true, cap, ttl, now)
redis.call('HSET', lcur, rid, label)
redis.call('EXPIRE', lcur, 2 * ttl)
redis.call('EXPIRE', lmeta, 4 * ttl)
return 'pending'
