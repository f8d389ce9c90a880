"""The live watch's buckets read back, and old ones merged into hourly ones.

A window's state is the merge of the buckets that start in it (an hourly rollup counts
when its hour overlaps the window: after `worker.rollup_after_hours` a window resolves to
whole hours). Rollups keep a week of reference at ~170 reads instead of ~10,000: the
worker reads an hour's minute buckets, merges them here (caps applied again) and
watch_rollup.lua swaps them for the merge only if none changed meanwhile (a fold in
between makes it refuse; the next round retries). A record folded late into a bucket
already rolled up lands in a new minute bucket, which the reader merges and the next
rollup folds into its hour: nothing is lost or counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import redis

from analysis.apply import ROLLUP_SECONDS
from analysis.watch_store import Bucket, decode_bucket, payload
from common.keys import Keys
from common.redis_client import store_errors
from common.scripts import SCRIPTS
from common.settings import Settings


def _members(raw: Sequence[tuple[bytes, float]]) -> list[tuple[str, int]]:
    out = []
    for member, score in raw:
        text = member.decode() if isinstance(member, bytes) else str(member)
        out.append((text, int(score)))
    return out


def read_buckets(
    client: redis.Redis, settings: Settings, from_s: float, to_s: float
) -> list[Bucket]:
    """Every bucket (and hourly rollup) of [from_s, to_s), oldest first, decoded."""
    keys = Keys(settings.redis.prefix)
    w = settings.watch
    with store_errors("cannot read the watch buckets"):
        raw = client.zrangebyscore(
            keys.watch_index(),
            int(from_s) - ROLLUP_SECONDS + 1,
            f"({math.ceil(to_s)}",
            withscores=True,
        )
        members = [(m, s) for m, s in _members(raw) if m.startswith("h") or s >= int(from_s)]
        pipe = client.pipeline(transaction=False)
        for member, _ in members:
            pipe.hgetall(keys.watch_base() + member)
        hashes = pipe.execute() if members else []
    return [
        decode_bucket(start, fields, w.max_features, w.max_categories)
        for (_, start), fields in zip(members, hashes, strict=True)
        if fields
    ]


def merged(buckets: Sequence[Bucket], settings: Settings) -> Bucket:
    """One bucket holding the merge of `buckets` (caps applied as in Redis)."""
    from analysis.watch_store import empty_states

    out = Bucket(0, empty_states(settings.watch.max_features, settings.watch.max_categories))
    for bucket in buckets:
        out.merge(bucket)
    return out


def roll_up_watch(client: redis.Redis, settings: Settings, now_s: float) -> int:
    """Merge the minute buckets of every hour that ended more than
    `worker.rollup_after_hours` ago into one hash per hour; returns the hours rolled."""
    w = settings.worker
    if not w.rollup_after_hours or w.bucket_seconds >= ROLLUP_SECONDS:
        return 0
    keys = Keys(settings.redis.prefix)
    horizon = int(now_s) - w.rollup_after_hours * 3600
    with store_errors("watch rollup failed"):
        raw = client.zrangebyscore(keys.watch_index(), "-inf", horizon, withscores=True)
    hours: dict[int, list[int]] = {}
    for member, start in _members(raw):
        if member.isdigit():
            hours.setdefault(start - start % ROLLUP_SECONDS, []).append(start)
    done = 0
    for hour, starts in sorted(hours.items()):
        if hour + ROLLUP_SECONDS <= horizon:
            done += _roll_hour(client, settings, keys, hour, sorted(starts))
    return done


def _roll_hour(
    client: redis.Redis, settings: Settings, keys: Keys, hour: int, starts: list[int]
) -> int:
    names = [keys.watch_bucket(s) for s in starts]
    with store_errors("watch rollup failed"):
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(name)
        hashes = pipe.execute()
    return swap_hour(client, settings, hour, starts, hashes)


def swap_hour(
    client: redis.Redis, settings: Settings, hour: int, starts: list[int], hashes: list[Any]
) -> int:
    """Replace the buckets `starts` by the merge of `hashes` (what was read of them) in one
    hourly hash, unless one changed since it was read (then 0, nothing changed)."""
    keys = Keys(settings.redis.prefix)
    names = [keys.watch_bucket(s) for s in starts]
    wset = settings.watch
    buckets = [
        decode_bucket(s, h, wset.max_features, wset.max_categories)
        for s, h in zip(starts, hashes, strict=True)
    ]
    whole = merged(buckets, settings)
    checks: list[object] = []
    for start, fields in zip(starts, hashes, strict=True):
        seen = [(fields.get(k) or b"").decode() for k in (b"i#req", b"l#n")]
        checks += [start, "|".join(seen)]
    extra = [*whole.labels.scalars(), ("l#join_full", whole.join_full)]
    body = payload(whole.states, [(k, v) for k, v in extra if v])
    with store_errors("watch rollup failed"):
        moved = SCRIPTS["watch_rollup"].register(client)(
            index=keys.watch_index(), hour=f"{keys.watch_base()}h{hour}",
            buckets=names, member=f"h{hour}", hour_start=hour,
            ttl=settings.worker.retention_hours * 3600,
            max_features=wset.max_features, max_categories=wset.max_categories,
            n_buckets=len(names), checks_then_payload=[*checks, *body],
        )  # fmt: skip
    return int(moved or 0)
