"""Label evidence per class and per value: recall per true class, error against numeric truth.

Overall accuracy can improve while one rare class loses recall. Every joined label also
counts its true class (at most 50 per bucket, the rest under `other`): labelled rows, both
models right, only the primary right, only the candidate right (`kyn/kya/kyb/kyc`,
join.lua). The recall change of class y is (c_y - b_y) / n_y, a paired difference; its
interval is the normal one of paired proportions, Bonferroni-adjusted over the classes
shown, so the gate rule (`gate.max_recall_drop`) can read every class at once.

Numeric ground truth (`{"request_id", "value"}`, regression) joins each side's score:
`numeric_truth` gives both mean absolute errors and RMSEs and the paired change of |error|
with its normal 95% interval (a candidate that failed the row is counted apart).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

from analysis.summaries import Summary

MIN_CLASS_ROWS = 30  # labelled rows of a class before its recall change gets an interval
ALPHA = 0.05


def by_class(s: Summary) -> list[dict[str, Any]]:
    """[{class, n, primary_recall, candidate_recall, delta, ci_low, ci_high}], largest first."""
    n = s.group("kyn")
    both, only_p, only_c = s.group("kya"), s.group("kyb"), s.group("kyc")
    shown = [y for y, count in n.items() if int(count) >= MIN_CLASS_ROWS]
    z = NormalDist().inv_cdf(1 - ALPHA / (2 * max(len(shown), 1)))
    rows = []
    for y, count in n.items():
        total, a = int(count), int(both.get(y, 0))
        b, c = int(only_p.get(y, 0)), int(only_c.get(y, 0))
        delta = (c - b) / total if total else None
        half = _half_width(total, b, c, z) if y in shown else None
        rows.append({
            "class": y, "n": total,
            "primary_recall": (a + b) / total if total else None,
            "candidate_recall": (a + c) / total if total else None,
            "delta": delta,
            "ci_low": None if half is None or delta is None else delta - half,
            "ci_high": None if half is None or delta is None else delta + half,
        })  # fmt: skip
    rows.sort(key=lambda r: (-r["n"], r["class"]))
    return rows


def _half_width(n: int, b: int, c: int, z: float) -> float:
    """z times the standard error of the paired difference (c - b) / n (+1 discordant pair
    of each kind, so 0 of 30 discordant still has a width)."""
    b1, c1 = b + 0.5, c + 0.5
    variance = ((b1 + c1) - (c1 - b1) ** 2 / n) / (n * n)
    return z * math.sqrt(max(variance, 0.0))


def numeric_truth(s: Summary) -> dict[str, Any]:
    """Regression against numeric ground truth: each side's mean absolute error and RMSE,
    and the change of |error| (candidate - primary, paired) with its 95% interval."""
    rows, failed = s.get("gn"), s.get("gerr")
    n = rows - failed
    if n <= 0:
        return {"n": 0, "candidate_failed": failed}
    mean = s.getf("gd") / n
    variance = max(s.getf("gdd") / n - mean * mean, 0.0) * n / max(n - 1, 1)
    half = NormalDist().inv_cdf(1 - ALPHA / 2) * math.sqrt(variance / n)
    return {
        "n": n,
        "candidate_failed": failed,
        "primary_mae": s.getf("gap") / n,
        "candidate_mae": s.getf("gac") / n,
        "primary_rmse": math.sqrt(s.getf("gsp") / n),
        "candidate_rmse": math.sqrt(s.getf("gsc") / n),
        "mae_change": mean,
        "ci_low": mean - half,
        "ci_high": mean + half,
    }
