"""Agreement over time: the report's per-bucket timeline as points with Wilson intervals.

The report (analysis.report) already lists every bucket of its window with its compared
rows and agreement; a chart needs an interval per point and at most a few hundred points,
so adjacent buckets are merged (counts add, as everywhere in shadowtrial) and each merged
point gets its own 95% Wilson interval. Intervals are per point, not simultaneous: a band
that dips once is expected noise, a band that stays low is not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from analysis.stats import wilson_interval

MAX_POINTS = 48


def _counts(point: Mapping[str, Any]) -> tuple[int, int]:
    """(compared rows, agreeing rows) of one timeline entry; agreement is agree / rows."""
    rows = int(point.get("rows") or 0)
    rate = point.get("agreement")
    if not rows or rate is None:
        return rows, 0
    return rows, round(float(rate) * rows)


def agreement_points(
    timeline: Iterable[Mapping[str, Any]],
    bucket_seconds: int,
    max_points: int = MAX_POINTS,
) -> list[dict[str, Any]]:
    """[{t, pairs, agree, rate, ci_low, ci_high}] in time order, at most `max_points`.

    `timeline` is the report's `timeline` ([{t, rows, agreement, ...}], one per bucket
    with data). Buckets are grouped into spans of a whole number of buckets; a span
    without rows yields no point, so the chart shows a gap rather than a guess.
    """
    entries = sorted(timeline, key=lambda p: p["t"])
    if not entries:
        return []
    first, last = int(entries[0]["t"]), int(entries[-1]["t"])
    buckets = (last - first) // bucket_seconds + 1
    span = bucket_seconds * max(1, math.ceil(buckets / max_points))
    merged: dict[int, list[int]] = {}
    for entry in entries:
        start = first + (int(entry["t"]) - first) // span * span
        rows, agree = _counts(entry)
        acc = merged.setdefault(start, [0, 0])
        acc[0] += rows
        acc[1] += agree
    return [_point(t, rows, agree) for t, (rows, agree) in sorted(merged.items()) if rows]


def _point(t: int, rows: int, agree: int) -> dict[str, Any]:
    low, high = wilson_interval(agree, rows)
    return {
        "t": t,
        "pairs": rows,
        "agree": agree,
        "rate": agree / rows,
        "ci_low": low,
        "ci_high": high,
    }
