"""Ground truth joined to pairs by request id, whichever arrives first, counted once.

A label and a pair meet in the candidate's hash slot. When the worker applies a pair it
looks for a label that came first; if there is none it leaves the pair's two predicted
labels behind. When a label comes (POST /v1/feedback -> `record_feedback`) it looks for
those predictions; if there are none it leaves the label behind. Both sides run as Lua
scripts on the same keys, so exactly one of them sees the other and counts the pair in
its bucket's a/b/c/d counters (la: both right, lb: only the primary, lc: only the
candidate, ld: both wrong; a candidate error is wrong). Whatever waits lives in two
generations of at most `worker.label_join_max` entries, each rotated after
`worker.label_join_hours`, so memory stays bounded however many labels never match.

Only single-row requests are joined (a label names one answer).
"""

from __future__ import annotations

import time

import redis

from analysis.adapters.base import label_text
from analysis.apply_script import JOIN_LUA, ROLLUP_SECONDS
from analysis.summaries import SEP
from common.errors import StoreError
from common.keys import Keys
from common.redis_client import queue_script
from common.settings import WorkerSettings

FEEDBACK_LUA = (
    JOIN_LUA
    + r"""
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
  local bucket, field = join_category(enc, label)
  local key = bucket_base .. bucket
  if redis.call('EXISTS', key) == 0 then  -- rolled up into its hour, or expired
    local start = tonumber(bucket)
    key = bucket_base .. 'h' .. (start - start % rollup)
  end
  if redis.call('EXISTS', key) == 1 then redis.call('HINCRBY', key, field, 1) end
  return 'joined'
end
local lcur, _, lmeta = join_gens(labels_base, true, cap, ttl, now)
redis.call('HSET', lcur, rid, label)
redis.call('EXPIRE', lcur, 2 * ttl)
redis.call('EXPIRE', lmeta, 4 * ttl)
return 'pending'
"""
)


def clean_label(value: object) -> str | None:
    """A label as the text predicted labels use ('1' for 1 and 1.0), no separator inside."""
    text = label_text(value)
    return None if text is None else text.replace(SEP, " ")


def join_value(bucket: int, primary: str, candidate: str | None) -> str:
    """What waits for a label: the pair's bucket and both labels (candidate None: error)."""
    p = primary.replace(SEP, " ")
    c = "" if candidate is None else candidate.replace(SEP, " ")
    return f"{bucket}{SEP}{p}{SEP}{c}{SEP}{1 if candidate is None else 0}"


def known_candidates(client: redis.Redis, keys: Keys) -> list[str]:
    """Candidates a worker has summarised or the registry lists."""
    pipe = client.pipeline(transaction=False)
    pipe.hkeys(keys.candidates_seen())
    pipe.hkeys(keys.registry())
    seen, registered = pipe.execute()
    return sorted({n.decode() if isinstance(n, bytes) else n for n in [*seen, *registered]})


def record_feedback(
    client: redis.Redis,
    keys: Keys,
    request_id: str,
    label: object,
    worker: WorkerSettings | None = None,
    now_s: float | None = None,
) -> dict[str, str]:
    """Join a ground-truth label to the request's pairs: {candidate: joined | pending}.

    Cheap (one script per candidate, pipelined) and order-free: a label for a pair not
    processed yet waits for it. Raises ValueError for a label that is not a class name.
    """
    text = clean_label(label)
    if text is None:
        raise ValueError(f"a label must be a string, integer or boolean, got {label!r}")
    worker = worker or WorkerSettings()
    ttl = worker.label_join_hours * 3600
    now = int(now_s if now_s is not None else time.time())
    try:
        candidates = known_candidates(client, keys)
        script = client.register_script(FEEDBACK_LUA)
        pipe = client.pipeline(transaction=False)
        for name in candidates:
            preds, labels = keys.label_join(name, "preds"), keys.label_join(name, "labels")
            args = [preds, labels, keys.bucket_base(name), request_id, text]
            queue_script(
                script,
                pipe,
                [f"{preds}:gen", f"{labels}:gen"],
                [*args, worker.label_join_max, ttl, now, ROLLUP_SECONDS],
            )
        answers = pipe.execute() if candidates else []
    except redis.RedisError as exc:
        raise StoreError(f"cannot record feedback for {request_id}: {exc}") from exc
    return {
        n: (a.decode() if isinstance(a, bytes) else a)
        for n, a in zip(candidates, answers, strict=True)
    }
