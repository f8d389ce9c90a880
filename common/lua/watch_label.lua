-- A ground-truth label for a watched answer (POST /v1/feedback), whichever comes first:
-- when the answer's prediction waits (current or previous generation), it is taken and
-- the label counted once in the bucket of its record (or that bucket's hourly rollup,
-- watchmerge's watch_count_label); otherwise the label waits for the fold (watch_fold.lua
-- looks for it). Returns joined, pending (the label waits), full (its generation is
-- full: not kept) or expired (the record's bucket is gone).
-- USES: watchmerge
-- KEYS: preds preds_prev labels
-- ARGV: base request_id label max_classes rollup cap ttl

local base, rid, label = ARGV[1], ARGV[2], ARGV[3]
local max_classes, rollup = tonumber(ARGV[4]), tonumber(ARGV[5])
local cap, ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local value = watch_take(KEYS[1], KEYS[2], rid)
if not value then
  if watch_wait(KEYS[3], rid, label, cap, ttl) then return 'pending' end
  return 'full'
end
local sep = string.find(value, '\31', 1, true)
if not sep then return 'expired' end
local start = tonumber(string.sub(value, 1, sep - 1))
local key = base .. start
if redis.call('EXISTS', key) == 0 then
  key = base .. 'h' .. (start - start % rollup)
  if redis.call('EXISTS', key) == 0 then return 'expired' end
end
watch_count_label(key, string.sub(value, sep + 1), label, max_classes)
return 'joined'
