"""Pipeline stage 4, apply: a batch's increments into Redis, exactly once; and rollups.

apply.lua (common/lua) runs once per batch. Atomically it (a) checks that every id of the
batch is still pending *for this consumer* (XACK does not check ownership: if another
worker claimed an entry after we read it, that worker applies it, and we must not); if
any is not, it changes nothing and returns those ids so the caller re-aggregates without
them; (b) adds
the batch's increments to the bucket hashes, indexes and expires the buckets; (c) joins
ground-truth labels that arrived first, or remembers the pair's predictions for labels
that come later (first pair wins: a request id already waiting is counted in
`label_dup`, never overwritten); (d) pushes drill-down samples; (e) XACKs the ids. A
crash before the script leaves the entries pending for XAUTOCLAIM; a crash after it has
applied them once.

rollup.lua merges old buckets into hourly ones. Slice value admission is in
analysis.admission.

Every key a script touches carries the candidate's hash tag, so on a Redis Cluster they
share one slot (the label-join generation keys are derived inside the script from a base
name with that tag).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from analysis.summaries import FLOAT_FIELDS, BatchDelta
from common.keys import SAMPLES_KEPT, Keys
from common.redis_client import store_errors
from common.scripts import SCRIPTS

SAMPLE_KINDS = ("divergent", "recent", "unparseable", "contract")


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
        self._script = SCRIPTS["apply"].register(client)

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
        samples = {kind: k.samples(candidate, kind) for kind in SAMPLE_KINDS}
        ordered = sorted(ids, key=_id_key)
        with store_errors(f"apply script failed for {candidate}"):
            missing = self._script(
                stream=k.pairs(candidate),
                index=k.bucket_index(candidate),
                **samples,
                buckets=[k.bucket(candidate, s) for s in starts],
                group=self.group,
                consumer=self.consumer,
                ttl=ttl_s,
                index_min=(starts[-1] if starts else int(now_s)) - ttl_s,  # relative to the data
                samples_cap=SAMPLES_KEPT,
                id_min=ordered[0],
                id_max=ordered[-1],
                preds_base=k.label_join(candidate, "preds"),
                labels_base=k.label_join(candidate, "labels"),
                join_cap=join_cap,
                join_ttl=join_ttl_s,
                now=int(now_s),
                batch=_batch_json(ids, delta, extras, starts),
                samples=_sample_args(extras),
            )
        return [m.decode() if isinstance(m, bytes) else str(m) for m in missing]


def _batch_json(
    ids: Sequence[str], delta: BatchDelta, extras: BatchExtras, starts: Sequence[int]
) -> bytes:
    """apply.lua's `batch`: the ids, the buckets' increments and the joins, one JSON
    document. Numbers travel as text: Lua would hold them as doubles (2^53 and up
    inexact), and HINCRBYFLOAT gets the very repr it always got."""
    position = {s: i + 1 for i, s in enumerate(starts)}
    joins: list[Any] = []
    for rid, enc, b in extras.joins:
        where = position.get(b)
        if where is not None:
            joins += (rid, enc, where)
    batch = {"ids": ids, "buckets": [_bucket_json(delta, s) for s in starts], "joins": joins}
    return orjson.dumps(batch)


def _bucket_json(delta: BatchDelta, start: int) -> list[Any]:
    """[start, integer fields, their values, float fields, their values]: parallel lists,
    built by C loops (a batch has hundreds of fields per bucket). Zero increments are
    left out: HINCRBY 0 would still create the field."""
    bucket = delta.buckets[start]
    ints: dict[str, int] = bucket.ints
    if 0 in ints.values():
        ints = {f: v for f, v in ints.items() if v}
    floats: dict[str, float] = bucket.floats
    if 0.0 in floats.values():
        floats = {f: v for f, v in floats.items() if v}
    return [str(start), list(ints), list(map(str, ints.values())),
            list(floats), list(map(repr, floats.values()))]  # fmt: skip


def _sample_args(extras: BatchExtras) -> list[Any]:
    """Per sample kind, how many, then the samples (the newest SAMPLES_KEPT)."""
    args: list[Any] = []
    for kind in SAMPLE_KINDS:
        items = extras.samples[kind][-SAMPLES_KEPT:]
        args.append(len(items))
        args += items
    return args


# -- rollup: old buckets merged into hourly ones ----------------------------------------

ROLLUP_SECONDS = 3600


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
    with store_errors(f"rollup failed for {candidate}"):
        ready = _hours_ready(client.zrangebyscore(keys.bucket_index(candidate), "-inf", horizon),
                             horizon)  # fmt: skip
        if not ready:
            return 0
        script = SCRIPTS["rollup"].register(client)
        floats = sorted(FLOAT_FIELDS)
        pipe = client.pipeline(transaction=False)
        for hour, starts in sorted(ready.items()):
            script.queue(
                pipe,
                index=keys.bucket_index(candidate),
                hour=keys.rollup(candidate, hour),
                buckets=[keys.bucket(candidate, s) for s in starts],
                member=f"h{hour}",
                hour_start=hour,
                ttl=ttl_s,
                n_float=len(floats),
                floats_then_starts=[*floats, *starts],
            )
        moved = pipe.execute()
    return sum(1 for m in moved if m)


def _hours_ready(members: Iterable[bytes], horizon: int) -> dict[int, list[int]]:
    """The bucket starts of every hour that ended before `horizon`, by hour."""
    hours: dict[int, list[int]] = {}
    for member in members:
        text = member.decode()
        if text.isdigit():
            start = int(text)
            hours.setdefault(start - start % ROLLUP_SECONDS, []).append(start)
    return {h: starts for h, starts in hours.items() if h + ROLLUP_SECONDS <= horizon}
