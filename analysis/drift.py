"""A window's features against a reference: distance, corrected significance, skew rates.

Per feature, two numbers must both be large before a flag (docs/statistics.md, "Watch"):
a *distance* that does not grow with traffic (normalised Wasserstein for numbers: the
mean shift of mass in units of the reference's standard deviation; Jensen-Shannon
distance for categories, in [0, 1]) and a *p-value* corrected over the features
(Benjamini-Hochberg): a million requests do not flag a trivial shift, a hundred do not
flag noise. Against a training profile the skew rates say what the model never saw:
the share of category values absent from training (`unseen_rate`), of numbers outside
the training range (`out_of_range_rate`), and the missing rate beside training's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats
from scipy.special import kolmogorov

from analysis.stats import (
    benjamini_hochberg,
    js_distance_hist,
    ks_distance_hist,
    ks_p_hist,
    wasserstein_hist,
)
from analysis.watch_outputs import outputs_summary
from analysis.watch_state import EDGES, OTHER, FeatureState, WatchState

NAN = float("nan")
UNSEEN_SHOWN = 5  # the most frequent values the reference never saw, per feature


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature is flagged: distance at least this large and p_adj below alpha."""

    numeric: float = 0.1  # Wasserstein, in reference standard deviations
    categorical: float = 0.1  # Jensen-Shannon distance
    alpha: float = 0.01
    min_count: int = 30  # fewer values in either side: drift is reported, never flagged


def _rate(part: float, whole: float) -> float:
    return part / whole if whole > 0 else NAN


def _missing(state: FeatureState | None, rows: int) -> float:
    """Share of rows where the feature was absent, null, NaN or not a scalar."""
    if state is None:
        return 1.0 if rows else NAN
    absent = max(rows - state.present, 0)
    return _rate(absent + state.null + state.nan + state.invalid, rows)


Scales = tuple[float, float]  # per side: requests per row (<= 1), the test's unit


def _unit(state: WatchState) -> float:
    """Requests per row: the tests count requests, not rows, so a batch of 500 near-identical
    rows weighs as one request (the distance still uses every row)."""
    readable = state.requests - state.unreadable
    return min(1.0, readable / state.rows) if state.rows and readable > 0 else 1.0


def _numeric(ref: FeatureState, cur: FeatureState, scales: Scales) -> tuple[float, float]:
    a, b = ref.histogram(), cur.histogram()
    if a.sum() == 0 or b.sum() == 0:
        return NAN, NAN
    return wasserstein_hist(a, b, EDGES), ks_p_hist(a * scales[0], b * scales[1])


def _numeric_fast(ref: FeatureState, cur: FeatureState, scales: Scales) -> tuple[float, float]:
    """As `_numeric` with the limiting Kolmogorov distribution for the p-value: ~100x
    cheaper than the exact one at small n, slightly anti-conservative there (the live
    watch's timeline, where each step is a small sample and there are many)."""
    a, b = ref.histogram(), cur.histogram()
    if a.sum() == 0 or b.sum() == 0:
        return NAN, NAN
    a, b = a * scales[0], b * scales[1]
    n, m = float(a.sum()), float(b.sum())
    d = ks_distance_hist(a, b)
    p = float(kolmogorov(math.sqrt(n * m / (n + m)) * d)) if not math.isnan(d) else NAN
    return wasserstein_hist(ref.histogram(), cur.histogram(), EDGES), min(1.0, p)


def _categorical(ref: FeatureState, cur: FeatureState, scales: Scales) -> tuple[float, float]:
    keys = sorted(set(ref.categories) | set(cur.categories))
    a = np.array([ref.categories.get(k, 0) for k in keys], dtype=float)
    b = np.array([cur.categories.get(k, 0) for k in keys], dtype=float)
    if a.sum() == 0 or b.sum() == 0:
        return NAN, NAN
    if len(keys) < 2:
        return 0.0, 1.0
    table = np.vstack([a * scales[0], b * scales[1]])
    p = float(scipy_stats.chi2_contingency(table[:, table.sum(axis=0) > 0]).pvalue)
    return js_distance_hist(a, b), p


def _skew(ref: FeatureState, cur: FeatureState, kind: str) -> dict[str, Any]:
    """Unseen and out-of-range rates of `cur` against what `ref` saw."""
    if kind == "categorical":
        known = set(ref.categories) - {OTHER}
        unseen = {k: c for k, c in cur.categories.items() if k not in known}
        top = sorted(unseen.items(), key=lambda kc: (-kc[1], kc[0]))[:UNSEEN_SHOWN]
        return {"unseen_rate": _rate(sum(unseen.values()), cur.n_categorical),
                "unseen_values": [{"value": k, "count": c} for k, c in top],
                "out_of_range_rate": NAN, "non_numeric_rate": NAN}  # fmt: skip
    out = 0
    for i, c in cur.numeric.items():
        if EDGES[i + 1] <= ref.low or EDGES[i] >= ref.high:
            out += c  # the whole bin lies outside the training range
    whole = cur.n_numeric + cur.n_categorical
    return {"unseen_rate": NAN, "out_of_range_rate": _rate(out, cur.n_numeric),
            "non_numeric_rate": _rate(cur.n_categorical, whole)}  # fmt: skip


def _feature_row(
    name: str,
    kind: str,
    pair: tuple[FeatureState, FeatureState | None],
    sides: tuple[WatchState, WatchState],
    fast: bool = False,
) -> dict[str, Any]:
    ref, cur = pair
    rows = (sides[0].rows, sides[1].rows)
    current = cur or FeatureState()
    compare = (_numeric_fast if fast else _numeric) if kind == "numeric" else _categorical
    distance, p = compare(ref, current, (_unit(sides[0]), _unit(sides[1])))
    count = current.n_numeric if kind == "numeric" else current.n_categorical
    ref_count = ref.n_numeric if kind == "numeric" else ref.n_categorical
    return {
        "feature": name, "kind": kind, "count": count, "reference_count": ref_count,
        "drift": distance, "p": p,
        "missing_rate": _missing(cur, rows[1]), "reference_missing_rate": _missing(ref, rows[0]),
        **_skew(ref, current, kind),
    }  # fmt: skip


def _flag(row: dict[str, Any], thresholds: DriftThresholds) -> bool:
    limit = thresholds.numeric if row["kind"] == "numeric" else thresholds.categorical
    enough = min(row["count"], row["reference_count"]) >= thresholds.min_count
    large = not math.isnan(row["drift"]) and row["drift"] >= limit
    significant = not math.isnan(row["p_adj"]) and row["p_adj"] < thresholds.alpha
    return bool(enough and large and significant)


def compare_states(
    reference: WatchState,
    current: WatchState,
    thresholds: DriftThresholds | None = None,
    fast: bool = False,
) -> list[dict[str, Any]]:
    """One row per reference feature (plus features the reference never had), most drifted
    first; `fast`: numeric p-values from the limiting distribution (see _numeric_fast)."""
    limits = thresholds or DriftThresholds()
    sides = (reference, current)
    out = [
        _feature_row(name, reference.kind(name), (state, current.features.get(name)), sides, fast)
        for name, state in reference.features.items()
    ]
    new = {k: v for k, v in current.features.items() if k not in reference.features}
    out += [_new_feature(name, state, current.rows) for name, state in new.items()]
    for row, p_adj in zip(out, benjamini_hochberg([r["p"] for r in out]), strict=True):
        row["p_adj"] = float(p_adj)
        row["flagged"] = _flag(row, limits)
    return sorted(out, key=lambda r: (not r["flagged"], -_finite(r["drift"]), r["feature"]))


def _new_feature(name: str, state: FeatureState, rows: int) -> dict[str, Any]:
    """A feature the reference never had: all of it is unseen, no distance can be told."""
    return {
        "feature": name, "kind": state.kind(), "count": state.present, "reference_count": 0,
        "drift": NAN, "p": NAN, "missing_rate": _missing(state, rows),
        "reference_missing_rate": NAN, "unseen_rate": 1.0, "out_of_range_rate": NAN,
        "non_numeric_rate": NAN, "new": True,
    }  # fmt: skip


def _finite(x: float) -> float:
    return -1.0 if math.isnan(x) else x


def _outputs(
    outputs: tuple[WatchState, WatchState] | None, thresholds: DriftThresholds | None
) -> dict[str, Any]:
    """The primary's answers on both sides, when both hold some (else {})."""
    if outputs is None or not (outputs[0].requests and outputs[1].requests):
        return {}
    rows = compare_states(*outputs, thresholds)
    return {**outputs_summary(*outputs), "features": [_json_safe(r) for r in rows],
            "flagged": [r["feature"] for r in rows if r["flagged"]]}  # fmt: skip


def watch_report(
    reference: WatchState,
    current: WatchState,
    reference_name: str,
    thresholds: DriftThresholds | None = None,
    outputs: tuple[WatchState, WatchState] | None = None,
) -> dict[str, Any]:
    """The watch document (the shape `GET /v1/watch` is to return) for two states, and
    the primary's answers (`outputs`: reference, current) when both sides recorded them."""
    features = compare_states(reference, current, thresholds)
    return {
        "reference": reference_name, "requests": current.requests, "rows": current.rows,
        "unreadable": current.unreadable, "features_over_cap": current.over_cap,
        "flagged": [f["feature"] for f in features if f["flagged"]],
        "features": [_json_safe(f) for f in features],
        "outputs": _outputs(outputs, thresholds),
    }  # fmt: skip


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    """NaN (undefined: nothing to compare) becomes null, so the document is strict JSON."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
