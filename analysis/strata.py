"""Stratified sampling weighted back: agreement and effective sample sizes under `[[strata]]`.

The proxy mirrors a stratum (requests whose header equals a value) at `sample` times each
candidate's rate, capped at 1 (proxy.mirror.StrataPolicy), so a rare slice gets enough
pairs. Its rows then weigh 1/pi, pi = min(1, rate * factor) (Horvitz-Thompson): the
weighted agreement estimates what a uniform sample would have measured, without the bias
oversampling puts in the raw rate. The counts come from the slice that reads the same
header (settings require one); rows without a stratum value form the rest, at the plain
rate. The interval is the stratified estimator's normal one. Kish's effective sample
size, (sum w)^2 / sum w^2, says what the weighted numbers are worth: for the whole window,
and for each slice row (split by stratum through the slice-pair counters when they hold
it; a slice inside one stratum keeps all its pairs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from analysis.summaries import SEP, Summary
from common.settings import Settings

Z = 1.959963984540054


@dataclass(frozen=True)
class Stratum:
    """One stratum's rows, disagreeing rows and inclusion probability (None: the rest)."""

    value: str | None
    factor: float
    inclusion: float
    rows: int
    disagree: int

    @property
    def weight(self) -> float:
        return 1.0 / self.inclusion if self.inclusion > 0 else 0.0


def stratum_feature(settings: Settings) -> tuple[str, dict[str, float]] | None:
    """(the slice name reading the strata's header, {value: factor}); None without strata."""
    if not settings.strata:
        return None
    source = settings.strata[0].source.lower()
    name = next(sl.name for sl in settings.slices if sl.source.lower() == source)
    return name, {st.value: st.sample for st in settings.strata}


def strata(s: Summary, feature: str, factors: dict[str, float], rate: float) -> list[Stratum]:
    """Each configured stratum, then the rest of the rows at the plain rate."""
    counts, disagree = s.group("s"), s.group("sd")
    out = []
    for value, factor in factors.items():
        key = f"{feature}{SEP}{value}"
        out.append(Stratum(value, factor, min(1.0, rate * factor), int(counts.get(key, 0)),
                           int(disagree.get(key, 0))))  # fmt: skip
    rest_rows = s.get("rows") - sum(x.rows for x in out)
    rest_disagree = (s.get("rows") - s.get("agree")) - sum(x.disagree for x in out)
    out.append(Stratum(None, 1.0, min(1.0, rate), max(rest_rows, 0), max(rest_disagree, 0)))
    return out


def effective(rows_weights: list[tuple[int, float]]) -> float:
    """Kish's effective sample size of rows with these weights."""
    total = sum(n * w for n, w in rows_weights)
    square = sum(n * w * w for n, w in rows_weights)
    return total * total / square if square > 0 else 0.0


def weighted_agreement(parts: list[Stratum]) -> dict[str, Any]:
    """The Horvitz-Thompson agreement over the strata, its 95% interval, Kish's n."""
    used = [x for x in parts if x.rows > 0 and x.weight > 0]
    mass = sum(x.rows * x.weight for x in used)
    if mass <= 0:
        return {"agreement": None, "ci_low": None, "ci_high": None, "effective_pairs": 0.0}
    rate = sum(x.weight * (x.rows - x.disagree) for x in used) / mass
    variance = 0.0
    for x in used:
        share = x.rows * x.weight / mass
        p = (x.rows - x.disagree + 0.5) / (x.rows + 1.0)  # never a zero variance
        variance += share * share * p * (1 - p) / x.rows
    half = Z * math.sqrt(variance)
    return {
        "agreement": rate,
        "ci_low": max(0.0, rate - half),
        "ci_high": min(1.0, rate + half),
        "effective_pairs": effective([(x.rows, x.weight) for x in used]),
    }


def stratified(s: Summary, settings: Settings, rate: float) -> dict[str, Any] | None:
    """The report's `stratified` section (None without `[[strata]]`)."""
    found = stratum_feature(settings)
    if found is None:
        return None
    feature, factors = found
    parts = strata(s, feature, factors, rate)
    rows = s.get("rows")
    return {
        "slice": feature,
        "rate": rate,
        "strata": [_row(x) for x in parts],
        "unweighted_agreement": s.get("agree") / rows if rows else None,
        **weighted_agreement(parts),
    }


def _row(x: Stratum) -> dict[str, Any]:
    agreement = (x.rows - x.disagree) / x.rows if x.rows else None
    return {"value": x.value, "factor": x.factor, "inclusion": x.inclusion, "pairs": x.rows,
            "agreement": agreement}  # fmt: skip


def slice_effective_pairs(
    s: Summary, settings: Settings, rate: float, slice_rows: list[dict[str, Any]]
) -> None:
    """Add `effective_pairs` to each slice row (its pairs when there are no strata)."""
    found = stratum_feature(settings)
    if found is None:
        for row in slice_rows:
            row["effective_pairs"] = row["pairs"]
        return
    feature, factors = found
    weights = {v: 1.0 / min(1.0, rate * f) for v, f in factors.items() if rate * f > 0}
    split = _split_by_stratum(s, feature)
    rest_weight = 1.0 / min(1.0, rate) if rate > 0 else 0.0
    for row in slice_rows:
        if row["slice"] == feature:
            row["effective_pairs"] = row["pairs"]
            continue
        by_value = split.get((row["slice"], row["value"]), {})
        parts = [(n, weights.get(v, rest_weight)) for v, n in by_value.items()]
        parts.append((max(row["pairs"] - sum(by_value.values()), 0), rest_weight))
        row["effective_pairs"] = round(effective(parts), 1)


def _split_by_stratum(s: Summary, feature: str) -> dict[tuple[str, str], dict[str, int]]:
    """(slice, value) -> {stratum value: rows}, from the slice-pair counters."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    for pair in s.slice_pairs():
        (f, v), (g, w) = pair["conditions"]
        if f == feature and g != feature:
            out.setdefault((g, w), {})[v] = pair["pairs"]
        elif g == feature and f != feature:
            out.setdefault((f, v), {})[w] = pair["pairs"]
    return out
