"""The live watch document: a window of watched traffic against a reference.

`watch_document(client, settings, window_s=..., reference=...)` is what `GET /v1/watch`,
`shadowtrial watch` (live), the gauges and the page read. The window is the last
`window_s` seconds of folded buckets (analysis.watch_store); the reference is one of:

- `pinned`: the window an operator pinned (`PUT /v1/watch/reference`);
- `profile`: a training profile (uploaded with `PUT /v1/watch/profile`, else the file
  `[watch] profile`): skew, i.e. what the model never saw in training;
- `day` / `week`: the same hours one day / one week earlier (rolling);
- `<fromISO>/<toISO>`: an explicit range;
- `auto` (the default, `[watch] reference`): the profile when there is one, else `day`.

Per feature, analysis.drift gives the distance, the p-value corrected over features and
the flag (both large and significant); the primary's outputs (class mix, confidence,
errors, latency) and the labels joined to watched answers come beside them, with a
timeline of the window in steps. Every string in the document may come from traffic.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import redis

from analysis.apply import ROLLUP_SECONDS
from analysis.drift import compare_states
from analysis.stats import hist_quantile, wilson_interval
from analysis.watch_rollup import merged, read_buckets
from analysis.watch_state import EDGES, OTHER, FeatureState, WatchState
from analysis.watch_store import LATENCY, Bucket, Labels, empty_states
from common.errors import ShadowtrialError
from common.keys import (
    FIELD_CANCELLED,
    FIELD_CAPTURE_DROPPED,
    FIELD_PRIMARY_FAILED,
    FIELD_SAMPLED,
    FIELD_SHED,
    FIELD_TOO_LARGE,
    WATCH,
    Keys,
)
from common.redis_client import store_errors
from common.settings import Settings, format_instant, parse_duration, parse_instant

REFERENCE_KINDS = ("pinned", "profile", "day", "week", "range")
SHIFTS = {"day": 86400, "week": 7 * 86400}
TIMELINE_STEPS = 48  # at most this many points in the timeline
CHART_BINS = 24  # a numeric chart regroups the fine EDGES bins into at most this many
CHART_VALUES = 12  # a categorical chart shows the most frequent values
FIRST_SEEN_SHOWN = 5
MAX_WINDOW_S = 31 * 86400
_DROPPED = (FIELD_CAPTURE_DROPPED, FIELD_TOO_LARGE, FIELD_PRIMARY_FAILED, FIELD_CANCELLED,
            FIELD_SHED)  # fmt: skip


class WatchError(ShadowtrialError, ValueError):
    """A window or reference that cannot be read (the API answers 400)."""


@dataclass(frozen=True)
class Reference:
    """What the window is compared with: a time range, or a profile (from/to None)."""

    kind: str
    from_s: float | None = None
    to_s: float | None = None


def parse_window(text: str | float | None, settings: Settings) -> float:
    """Seconds of a `window` parameter ('1h'); the configured default when empty."""
    if text is None or text == "":
        return settings.watch.window
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise WatchError(str(exc)) from None
    if seconds > MAX_WINDOW_S:
        raise WatchError("a watch window is at most 31 days")
    return seconds


def parse_reference(text: str | None, settings: Settings, profile_known: bool) -> Reference:
    """A `reference` parameter: pinned | profile | day | week | <fromISO>/<toISO> | auto."""
    kind = (text or settings.watch.reference or "auto").strip()
    if kind == "auto":
        return Reference("profile" if profile_known else "day")
    if kind in ("pinned", "profile", "day", "week"):
        return Reference(kind)
    start, sep, end = kind.partition("/")
    if not sep:
        raise WatchError("reference: expected pinned, profile, day, week or <fromISO>/<toISO>")
    return Reference("range", *time_range(start, end))


def time_range(start: str, end: str) -> tuple[float, float]:
    """(from, to) epoch seconds of two ISO times; WatchError unless from < to."""
    try:
        lo, hi = parse_instant(start).timestamp(), parse_instant(end).timestamp()
    except ValueError as exc:
        raise WatchError(str(exc)) from None
    if not lo < hi:
        raise WatchError("a reference range needs from < to")
    if hi - lo > 400 * 86400:
        raise WatchError("a reference range spans at most 400 days")
    return lo, hi


# -- the reference, read ------------------------------------------------------------------


def load_pinned(client: redis.Redis, keys: Keys) -> tuple[float, float] | None:
    """The pinned reference window, when one was pinned."""
    with store_errors("cannot read the pinned watch reference"):
        raw = client.hgetall(keys.watch_reference())
    try:
        return time_range(raw[b"from"].decode(), raw[b"to"].decode())
    except (KeyError, WatchError, UnicodeDecodeError):
        return None


def load_profile_state(client: redis.Redis, settings: Settings) -> tuple[WatchState | None, str]:
    """The training profile (uploaded first, else `[watch] profile`) and a problem text."""
    from analysis.profile import ProfileError, load_profile

    with store_errors("cannot read the watch profile"):
        raw = client.get(Keys(settings.redis.prefix).watch_profile())
    if raw:
        try:
            return WatchState.from_dict(orjson.loads(raw)), ""
        except (ValueError, TypeError, AttributeError) as exc:
            return None, f"the uploaded profile cannot be read: {exc}"
    if settings.watch.profile:
        from pathlib import Path

        try:
            return load_profile(Path(settings.watch.profile)), ""
        except ProfileError as exc:
            return None, str(exc)
    return None, "no training profile: PUT /v1/watch/profile or set [watch] profile"


def _profile_known(client: redis.Redis, settings: Settings) -> bool:
    if settings.watch.profile:
        return True
    with store_errors("cannot read the watch profile"):
        return bool(client.exists(Keys(settings.redis.prefix).watch_profile()))


# -- the document -------------------------------------------------------------------------


def watch_document(
    client: redis.Redis,
    settings: Settings,
    window_s: float | None = None,
    reference: str | None = None,
    now_s: float | None = None,
) -> dict[str, Any]:
    """The live watch document (the contract of docs/operating.md, "Watch")."""
    now = time.time() if now_s is None else now_s
    seconds = parse_window(window_s, settings)
    ref = parse_reference(reference, settings, _profile_known(client, settings))
    start = now - seconds
    buckets = read_buckets(client, settings, start, now)
    current = merged(buckets, settings)
    ref_bucket, ref_doc = _reference(client, settings, ref, (start, now))
    inputs = current.states["i"]
    features = _features(ref_bucket, current, ref_doc["available"])
    return {
        "window": {"from": format_instant(start), "to": format_instant(now),
                   "seconds": int(seconds)},
        "reference": ref_doc,
        "requests": inputs.requests, "rows": inputs.rows, "unreadable": inputs.unreadable,
        "features_over_cap": inputs.over_cap,
        "flagged": [f["feature"] for f in features if f["flagged"]],
        "features": features,
        "outputs": _outputs(ref_bucket, current, ref_doc["available"]),
        "labels": _labels(buckets, current.labels, settings, (start, now, seconds)),
        "timeline": _timeline(buckets, ref_bucket, settings, (start, now, seconds)),
        "accounting": _accounting(client, settings, (start, now), current),
    }  # fmt: skip


def _reference(
    client: redis.Redis, settings: Settings, ref: Reference, window: tuple[float, float]
) -> tuple[Bucket, dict[str, Any]]:
    """The reference's merged state and its part of the document."""
    empty = Bucket(0, empty_states(settings.watch.max_features, settings.watch.max_categories))
    if ref.kind == "profile":
        state, problem = load_profile_state(client, settings)
        if state is not None:
            empty.states["i"] = state
        return empty, _ref_doc(ref.kind, None, None, state.requests if state else 0, problem)
    span = _span(client, settings, ref, window)
    if span is None:
        problem = "no reference pinned: PUT /v1/watch/reference or `shadowtrial watch pin`"
        return empty, _ref_doc(ref.kind, None, None, 0, problem)
    bucket = merged(read_buckets(client, settings, *span), settings)
    requests = bucket.states["i"].requests
    problem = "" if requests else "no watched requests in the reference window"
    return bucket, _ref_doc(ref.kind, *span, requests, problem)


def _span(
    client: redis.Redis, settings: Settings, ref: Reference, window: tuple[float, float]
) -> tuple[float, float] | None:
    if ref.kind == "pinned":
        return load_pinned(client, Keys(settings.redis.prefix))
    if ref.kind in SHIFTS:
        shift = SHIFTS[ref.kind]
        return window[0] - shift, window[1] - shift
    assert ref.from_s is not None and ref.to_s is not None
    return ref.from_s, ref.to_s


def _ref_doc(
    kind: str, lo: float | None, hi: float | None, requests: int, problem: str
) -> dict[str, Any]:
    return {
        "kind": kind,
        "from": format_instant(lo) if lo is not None else None,
        "to": format_instant(hi) if hi is not None else None,
        "requests": requests, "available": not problem, "problem": problem or None,
    }  # fmt: skip


# -- features ---------------------------------------------------------------------------


def _features(ref: Bucket, cur: Bucket, available: bool) -> list[dict[str, Any]]:
    reference, current = ref.states["i"], cur.states["i"]
    if not available:
        return [_alone(name, fs, current) for name, fs in current.features.items()]
    rows = compare_states(reference, current)
    return [_feature(row, reference, current) for row in rows]


def _alone(name: str, state: FeatureState, current: WatchState) -> dict[str, Any]:
    """A feature with no reference to compare with: counts and its chart only."""
    kind = state.kind()
    return {
        "feature": name, "kind": kind, "drift": None, "p_adj": None, "flagged": False,
        "unseen_rate": None, "out_of_range_rate": None,
        "missing_rate": _missing(state, current.rows), "missing_rate_reference": None,
        "count": state.n_numeric if kind == "numeric" else state.n_categorical,
        "first_seen": [], "chart": _chart(kind, None, state),
    }  # fmt: skip


def _feature(row: dict[str, Any], reference: WatchState, current: WatchState) -> dict[str, Any]:
    name = row["feature"]
    kind = row["kind"]
    ref_state = reference.features.get(name)
    cur_state = current.features.get(name) or FeatureState()
    return {
        "feature": name, "kind": kind, "drift": _num(row["drift"]),
        "p_adj": _num(row.get("p_adj")), "flagged": bool(row.get("flagged")),
        "unseen_rate": _num(row.get("unseen_rate")),
        "out_of_range_rate": _num(row.get("out_of_range_rate")),
        "missing_rate": _num(row.get("missing_rate")) or 0.0,
        "missing_rate_reference": _num(row.get("reference_missing_rate")),
        "count": int(row.get("count") or 0),
        "first_seen": [str(v["value"]) for v in row.get("unseen_values", [])][:FIRST_SEEN_SHOWN],
        "chart": _chart(kind, ref_state, cur_state),
    }  # fmt: skip


def _missing(state: FeatureState, rows: int) -> float:
    absent = max(rows - state.present, 0)
    return (absent + state.null + state.nan + state.invalid) / rows if rows else 0.0


def _num(x: object) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [float(c / total) if total else 0.0 for c in counts]


def _chart(kind: str, ref: FeatureState | None, cur: FeatureState) -> dict[str, Any]:
    """Reference against now, in shares: regrouped bins, or the most frequent values."""
    if kind == "categorical":
        return _category_chart(ref, cur)
    a = ref.histogram() if ref is not None else np.zeros(len(EDGES) - 1)
    b = cur.histogram()
    used = np.flatnonzero((a + b) > 0)
    if not used.size:
        return {"kind": "numeric", "edges": [], "now": [], "reference": []}
    lo, hi = int(used[0]), int(used[-1]) + 1
    cuts = np.unique(np.linspace(lo, hi, min(CHART_BINS, hi - lo) + 1).round().astype(int))
    regroup = np.add.reduceat
    return {
        "kind": "numeric", "edges": [float(EDGES[i]) for i in cuts],
        "now": _shares(regroup(b[lo:hi], cuts[:-1] - lo)),
        "reference": _shares(regroup(a[lo:hi], cuts[:-1] - lo)) if ref is not None else [],
    }  # fmt: skip


def _category_chart(ref: FeatureState | None, cur: FeatureState) -> dict[str, Any]:
    now, before = cur.categories, (ref.categories if ref is not None else {})
    n_now, n_ref = sum(now.values()), sum(before.values())

    def share(counts: dict[str, int], total: int, key: str) -> float:
        return counts.get(key, 0) / total if total else 0.0

    keys = sorted(
        set(now) | set(before),
        key=lambda k: (-max(share(now, n_now, k), share(before, n_ref, k)), k),
    )
    shown = keys[:CHART_VALUES]
    if OTHER in keys and OTHER not in shown:
        shown.append(OTHER)
    values = [{"value": k, "now": share(now, n_now, k), "reference": share(before, n_ref, k)}
              for k in shown]  # fmt: skip
    return {"kind": "categorical", "values": values}


# -- outputs, labels, timeline, accounting --------------------------------------------------


def _mean(state: WatchState, name: str) -> float | None:
    feature = state.features.get(name)
    return None if feature is None else _num(feature.mean())


def _mix(state: WatchState) -> dict[str, float]:
    feature = state.features.get("class")
    if feature is None or not feature.n_categorical:
        return {}
    total = feature.n_categorical
    return {k: c / total for k, c in sorted(feature.categories.items(), key=lambda kc: -kc[1])}


def _kind(state: WatchState) -> str:
    if "class" in state.features:
        return "classification"
    return "regression" if "score" in state.features else "unknown"


def _outputs(ref: Bucket, cur: Bucket, available: bool) -> dict[str, Any]:
    out, before, timing = cur.states["o"], ref.states["o"], cur.states["t"]
    confidence: dict[str, Any] = {}
    if available and before.requests and out.requests:
        rows = compare_states(before, out)
        confidence = next((r for r in rows if r["feature"] == "confidence"), {})
    latency = timing.features.get(LATENCY)
    hist = latency.histogram() if latency is not None else None
    return {
        "kind": _kind(out if out.features else before),
        "class_mix": _mix(out), "class_mix_reference": _mix(before),
        "mean_confidence": _mean(out, "confidence"),
        "mean_confidence_reference": _mean(before, "confidence"),
        "confidence_drift": _num(confidence.get("drift")),
        "confidence_p_adj": _num(confidence.get("p_adj")),
        "confidence_flagged": bool(confidence.get("flagged")),
        "errors": out.errors, "error_rate": out.errors / out.requests if out.requests else None,
        "latency_p50_ms": _quantile(hist, 0.5), "latency_p99_ms": _quantile(hist, 0.99),
    }  # fmt: skip


def _quantile(hist: np.ndarray | None, q: float) -> float | None:
    if hist is None or hist.sum() <= 0:
        return None
    return _num(hist_quantile(hist, EDGES, q))


def _accuracy(labels: Labels) -> dict[str, Any]:
    if not labels.n:
        return {"labelled": 0, "accuracy": None, "low": None, "high": None}
    low, high = wilson_interval(labels.right, labels.n)
    return {"labelled": labels.n, "accuracy": labels.right / labels.n, "low": low, "high": high}


def _steps(
    buckets: list[Bucket], settings: Settings, span: tuple[float, float, float]
) -> list[tuple[int, list[Bucket]]]:
    """The window cut into at most TIMELINE_STEPS steps of whole buckets."""
    start, _, seconds = span
    width = settings.worker.bucket_seconds
    step = max(width, math.ceil(seconds / TIMELINE_STEPS / width) * width)
    first = int(start) - int(start) % step
    groups: dict[int, list[Bucket]] = {}
    for bucket in buckets:
        at = max(bucket.start, first)
        groups.setdefault(at - (at - first) % step, []).append(bucket)
    return sorted(groups.items())


def _labels(
    buckets: list[Bucket], labels: Labels, settings: Settings, span: tuple[float, float, float]
) -> dict[str, Any]:
    over_time = []
    for at, group in _steps(buckets, settings, span):
        step = Labels()
        for bucket in group:
            step.merge(bucket.labels)
        if step.n:
            over_time.append({"start": format_instant(at), **_accuracy(step)})
    recall = {cls: r / n for cls, (n, r) in labels.per_class.items() if n}
    return {**_accuracy(labels), "per_class_recall": recall, "over_time": over_time}


def _timeline(
    buckets: list[Bucket], ref: Bucket, settings: Settings, span: tuple[float, float, float]
) -> list[dict[str, Any]]:
    reference = ref.states["i"]
    out = []
    for at, group in _steps(buckets, settings, span):
        step = merged(group, settings)
        inputs = step.states["i"]
        rows = compare_states(reference, inputs, fast=True) if reference.features else []
        drifts = [r["drift"] for r in rows if _num(r["drift"]) is not None]
        out.append({
            "start": format_instant(at), "requests": inputs.requests,
            "max_drift": max(drifts) if drifts else None,
            "flagged": sum(1 for r in rows if r["flagged"]),
            "mean_confidence": _mean(step.states["o"], "confidence"),
        })  # fmt: skip
    return out


def _accounting(
    client: redis.Redis, settings: Settings, span: tuple[float, float], current: Bucket
) -> dict[str, Any]:
    """The proxies' capture counts of the window (their buckets) beside what was folded:
    captured = folded + dropped + still in the stream."""
    keys = Keys(settings.redis.prefix)
    with store_errors("cannot read the watch accounting"):
        raw = client.zrangebyscore(
            keys.bucket_index(WATCH), int(span[0]) - ROLLUP_SECONDS + 1,
            f"({math.ceil(span[1])}", withscores=True,
        )  # fmt: skip
        members = [m for m, s in raw if m.startswith(b"h") or s >= int(span[0])]  # as buckets
        pipe = client.pipeline(transaction=False)
        for member in members:
            pipe.hgetall(keys.bucket_base(WATCH) + member.decode())
        hashes = pipe.execute() if members else []
    totals: dict[str, int] = {}
    for fields in hashes:
        for name, value in fields.items():
            key = name.decode("utf-8", "replace")
            totals[key] = totals.get(key, 0) + int(value) if value.isdigit() else totals.get(key, 0)
    inputs = current.states["i"]
    return {
        "captured": totals.get(FIELD_SAMPLED, 0), "folded": inputs.requests,
        "unreadable": inputs.unreadable, "dropped": sum(totals.get(f, 0) for f in _DROPPED),
    }  # fmt: skip
