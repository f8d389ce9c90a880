"""The Lua scripts that make summaries exact: apply-and-acknowledge, and value admission.

`APPLY` runs once per batch. Atomically it (a) checks that every id of the batch is still
pending *for this consumer* (XACK does not check ownership: if another worker claimed an
entry after we read it, that worker applies it, and we must not); if any is not, it
changes nothing and returns those ids so the caller re-aggregates without them; (b) adds
the batch's increments to the bucket hashes, indexes and expires the buckets; (c) joins
ground-truth labels that arrived first, or remembers the pair's predictions for labels
that come later (first pair wins: a request id already waiting is counted in
`label_dup`, never overwritten); (d) pushes drill-down samples; (e) XACKs the ids. A
crash before the script leaves the entries pending for XAUTOCLAIM; a crash after it has
applied them once.

Every key a script touches carries the candidate's hash tag, so on a Redis Cluster they
share one slot (the label-join generation keys are derived inside the script from a base
name with that tag).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import redis

from analysis.slices import MAX_VALUES, OTHER, RESERVED
from analysis.summaries import FLOAT_FIELDS, BatchDelta
from common.errors import StoreError
from common.keys import SAMPLES_KEPT, Keys
from common.redis_client import queue_script

SAMPLE_KINDS = ("divergent", "recent", "unparseable", "contract")

# Shared by both join directions: two generations per kind, rotated by size or age.
JOIN_LUA = r"""
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
"""

APPLY_LUA = (
    JOIN_LUA
    + r"""
-- KEYS: stream, bucket index, samples (divergent, recent, unparseable, contract), buckets...
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
      local _, field = join_category(enc, label)
      redis.call('HINCRBY', KEYS[6 + b], field, 1)
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
"""
)

# Admit values of one feature until the set holds `cap`; answer 1 (admitted) or 0 per value.
ADMIT_LUA = r"""
local cap = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local out = {}
local size = redis.call('SCARD', KEYS[1])
for i = 3, #ARGV do
  local v = ARGV[i]
  if redis.call('SISMEMBER', KEYS[1], v) == 1 then
    out[#out + 1] = 1
  elseif size < cap then
    redis.call('SADD', KEYS[1], v)
    size = size + 1
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
redis.call('EXPIRE', KEYS[1], ttl)
return out
"""


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class BatchExtras:
    """What a batch adds besides counters: label-join items and drill-down samples."""

    joins: list[tuple[str, str, int]] = field(default_factory=list)  # rid, enc, bucket start
    samples: dict[str, list[bytes]] = field(default_factory=lambda: {k: [] for k in SAMPLE_KINDS})


class Applier:
    """Runs APPLY for one batch of one candidate's stream (EVALSHA, loaded on first use)."""

    def __init__(self, client: redis.Redis, keys: Keys, group: str, consumer: str) -> None:
        self.client = client
        self.keys = keys
        self.group = group
        self.consumer = consumer
        self._script = client.register_script(APPLY_LUA)

    def apply(
        self,
        candidate: str,
        ids: Sequence[str],
        delta: BatchDelta,
        extras: BatchExtras,
        *,
        ttl_s: int,
        join_cap: int,
        join_ttl_s: int,
        now_s: float,
    ) -> list[str]:
        """Apply and acknowledge; return the ids no longer pending for us (nothing applied)."""
        starts = sorted(delta.buckets)
        k = self.keys
        keys = [k.pairs(candidate), k.bucket_index(candidate)]
        keys += [k.samples(candidate, kind) for kind in SAMPLE_KINDS]
        keys += [k.bucket(candidate, s) for s in starts]
        ordered = sorted(ids, key=_id_key)
        args: list[Any] = [
            self.group,
            self.consumer,
            len(ids),
            ttl_s,
            (starts[-1] if starts else int(now_s)) - ttl_s,  # index trims relative to the data
            SAMPLES_KEPT,
            ordered[0],
            ordered[-1],
            k.label_join(candidate, "preds"),
            k.label_join(candidate, "labels"),
            join_cap,
            join_ttl_s,
            int(now_s),
            *ids,
        ]
        args += _bucket_args(delta, starts)
        position = {s: i + 1 for i, s in enumerate(starts)}
        joins = [j for j in extras.joins if j[2] in position]
        args.append(len(joins))
        args += chain.from_iterable((rid, enc, position[b]) for rid, enc, b in joins)
        for kind in SAMPLE_KINDS:
            items = extras.samples[kind][-SAMPLES_KEPT:]
            args.append(len(items))
            args += items
        try:
            missing = self._script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise StoreError(f"apply script failed for {candidate}: {exc}") from exc
        return [m.decode() if isinstance(m, bytes) else str(m) for m in missing]


def _bucket_args(delta: BatchDelta, starts: Sequence[int]) -> list[Any]:
    """Flatten per-bucket increments: start, n_int, (field, value)*, n_float, (field, value)*."""
    args: list[Any] = [len(starts)]
    for start in starts:
        bucket = delta.buckets[start]
        ints = [(f, v) for f, v in bucket.ints.items() if v]
        floats = [(f, repr(v)) for f, v in bucket.floats.items() if v]
        args.append(start)
        args.append(len(ints))
        args += chain.from_iterable(ints)
        args.append(len(floats))
        args += chain.from_iterable(floats)
    return args


class Admission:
    """Which slice values (and classes) are counted apart; the rest fold into OTHER.

    Backed by one Redis set per candidate and feature holding at most MAX_VALUES (50)
    values (reserved ones like `(missing)` never use the cap). Admission is permanent
    while the set lives, so this process caches both answers; only values it has never
    seen cost a (batched) round trip.
    """

    LOCAL_LIMIT = 100_000  # refused values remembered per feature before forgetting them

    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: int, cap: int = MAX_VALUES) -> None:
        self.client = client
        self.keys = keys
        self.ttl_s = ttl_s
        self.cap = cap
        self._script = client.register_script(ADMIT_LUA)
        self._known: dict[tuple[str, str], dict[str, bool]] = {}

    def prepare(self, candidate: str, wanted: dict[str, set[str]]) -> None:
        """Admit or refuse every value not decided yet, one script call per feature."""
        asks = []
        for feature, values in wanted.items():
            known = self._known.setdefault((candidate, feature), {})
            new = [v for v in values if v not in known and v not in RESERVED]
            if new:
                asks.append((feature, known, new))
        if not asks:
            return
        pipe = self.client.pipeline(transaction=False)
        for feature, _, new in asks:
            key = self.keys.admitted(candidate, feature)
            queue_script(self._script, pipe, [key], [self.cap, self.ttl_s, *new])
        try:
            answers = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"slice value admission failed for {candidate}: {exc}") from exc
        for (_, known, new), answer in zip(asks, answers, strict=True):
            if len(known) > self.LOCAL_LIMIT:
                known.clear()
            known.update(zip(new, (bool(a) for a in answer), strict=True))

    def folder(self, candidate: str) -> Any:
        """fold(feature, value) -> value if admitted else OTHER (values must be prepared)."""
        known = self._known

        def fold(feature: str, value: str) -> str:
            if value in RESERVED:
                return value
            decided = known.get((candidate, feature))
            return value if decided is not None and decided.get(value, False) else OTHER

        return fold


def admitted_values(
    client: redis.Redis, keys: Keys, candidate: str, features: Iterable[str]
) -> dict[str, set[str]]:
    """The admitted set of each feature (for tests and diagnostics)."""
    pipe = client.pipeline(transaction=False)
    names = list(features)
    for f in names:
        pipe.smembers(keys.admitted(candidate, f))
    return {
        f: {v.decode() for v in members} for f, members in zip(names, pipe.execute(), strict=True)
    }


# -- rollup: old buckets merged into hourly ones ----------------------------------------

ROLLUP_SECONDS = 3600

# Move every listed bucket's counters into the hour's rollup hash and delete the bucket,
# atomically: a report sees each count in exactly one of them. A bucket recreated later
# by a late record is simply rolled up again.
ROLLUP_LUA = r"""
local index, hour = KEYS[1], KEYS[2]
local n_float = tonumber(ARGV[4])
local floats = {}
for i = 1, n_float do floats[ARGV[4 + i]] = true end
local moved = 0
for k = 3, #KEYS do
  local fields = redis.call('HGETALL', KEYS[k])
  for i = 1, #fields, 2 do
    if floats[fields[i]] then
      redis.call('HINCRBYFLOAT', hour, fields[i], fields[i + 1])
    else
      redis.call('HINCRBY', hour, fields[i], fields[i + 1])
    end
  end
  if #fields > 0 then moved = moved + 1 end
  redis.call('DEL', KEYS[k])
  redis.call('ZREM', index, ARGV[4 + n_float + k - 2])
end
if redis.call('EXISTS', hour) == 1 then
  redis.call('ZADD', index, ARGV[2], ARGV[1])
  redis.call('EXPIRE', hour, ARGV[3])
end
return moved
"""


def roll_up(
    client: redis.Redis,
    keys: Keys,
    candidate: str,
    *,
    now_s: float,
    bucket_seconds: int,
    after_s: int,
    ttl_s: int,
) -> int:
    """Merge the buckets of every hour that ended more than `after_s` ago; returns how many."""
    if bucket_seconds >= ROLLUP_SECONDS or ROLLUP_SECONDS % bucket_seconds:
        return 0
    horizon = int(now_s) - after_s
    try:
        members = client.zrangebyscore(keys.bucket_index(candidate), "-inf", horizon)
        hours: dict[int, list[int]] = {}
        for member in members:
            text = member.decode()
            if text.isdigit():
                start = int(text)
                hours.setdefault(start - start % ROLLUP_SECONDS, []).append(start)
        ready = {h: starts for h, starts in hours.items() if h + ROLLUP_SECONDS <= horizon}
        if not ready:
            return 0
        script = client.register_script(ROLLUP_LUA)
        floats = sorted(FLOAT_FIELDS)
        pipe = client.pipeline(transaction=False)
        for hour, starts in sorted(ready.items()):
            bucket_keys = [keys.bucket(candidate, s) for s in starts]
            queue_script(
                script,
                pipe,
                [keys.bucket_index(candidate), keys.rollup(candidate, hour), *bucket_keys],
                [f"h{hour}", hour, ttl_s, len(floats), *floats, *starts],
            )
        moved = pipe.execute()
    except redis.RedisError as exc:
        raise StoreError(f"rollup failed for {candidate}: {exc}") from exc
    return sum(1 for m in moved if m)
