"""The report's `dispatch` section: candidates called by dispatchers (`run = "dispatcher"`).

From the bucket counts the proxies and dispatchers add (common.keys FIELD_DISPATCH_*):
requests queued, dispatched (a pair written), and those that ended without a pair, which
the accounting's `dropped` also lists (`dispatch_overflow`, `dispatch_expired`,
`dispatch_trimmed`, `dispatch_bad`). From the stream itself, read when the report is built:
the queue depth and the lag (age of the oldest request waiting, common.dispatch_queue).

Candidate latency by mode: the worker's `lc` histogram holds every pair's candidate
latency; dispatchers also count theirs as `dl`, so the proxy's calls are `lc - dl`. A
candidate that ran in both modes in the window shows both; otherwise one side has n = 0.
None when nothing in the window was dispatched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import redis

from analysis import stats
from analysis.summaries import LATENCY_EDGES, Summary
from common import dispatch_queue
from common.keys import (
    FIELD_DISPATCH_BAD,
    FIELD_DISPATCH_EXPIRED,
    FIELD_DISPATCH_OVERFLOW,
    FIELD_DISPATCH_QUEUED,
    FIELD_DISPATCH_TRIMMED,
    FIELD_DISPATCHED,
    Keys,
)
from common.redis_client import store_errors

_DROPS = {
    "dispatch_overflow": FIELD_DISPATCH_OVERFLOW,
    "dispatch_expired": FIELD_DISPATCH_EXPIRED,
    "dispatch_trimmed": FIELD_DISPATCH_TRIMMED,
    "dispatch_bad": FIELD_DISPATCH_BAD,
}


def dispatched_here(s: Summary) -> bool:
    """True when any dispatch count is in the window."""
    return any(name.startswith("dispatch:") for name in s.counts)


def dispatch_drops(s: Summary) -> dict[str, int]:
    """The accounting's `dropped` entries for dispatched requests ({} when none)."""
    if not dispatched_here(s):
        return {}
    return {name: s.get(field) for name, field in _DROPS.items()}


def dispatch_section(s: Summary) -> dict[str, Any] | None:
    """Counts and latency by mode (the queue's state is added by `add_queue_state`)."""
    if not dispatched_here(s):
        return None
    bins = len(LATENCY_EDGES) - 1
    by_dispatcher = s.hist("dl", bins)
    by_proxy = np.clip(s.hist("lc", bins) - by_dispatcher, 0, None)
    return {
        "queued": s.get(FIELD_DISPATCH_QUEUED),
        "dispatched": s.get(FIELD_DISPATCHED),
        **{name.removeprefix("dispatch_"): n for name, n in dispatch_drops(s).items()},
        "candidate_latency": {
            "dispatcher": _quantiles(by_dispatcher),
            "proxy": _quantiles(by_proxy),
        },
    }


def _quantiles(hist: np.ndarray) -> dict[str, Any]:
    return {**stats.latency_quantiles(hist, LATENCY_EDGES), "n": int(hist.sum())}


def add_queue_state(
    client: redis.Redis, keys: Keys, candidate: str, section: dict[str, Any] | None
) -> None:
    """The queue depth and lag now (the stream is read, not the window's buckets)."""
    if section is None:
        return
    pipe = client.pipeline(transaction=False)
    dispatch_queue.queue(pipe, keys, candidate)
    with store_errors(f"cannot read the request queue of {candidate}"):
        depth, first = pipe.execute(raise_on_error=False)
    section.update(dispatch_queue.parse(depth, first).as_dict())


__all__ = ["add_queue_state", "dispatch_drops", "dispatch_section", "dispatched_here"]
