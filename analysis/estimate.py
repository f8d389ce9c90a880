"""Accuracy estimated before labels arrive, and whether that estimate can be trusted.

Confidence-based performance estimation (CBPE, as NannyML's): a calibrated model whose
top-class probability is c is right with probability c, so over n rows its expected
accuracy is mean(c) and its realised accuracy varies around it with variance
sum c(1 - c) / n^2 (a Poisson-binomial). Both sums come from counters the worker keeps
anyway (cpn/cps and the cp:i histogram per side), so the estimate costs nothing and is
there from the first pair.

The assumption (calibration) is checked as labels arrive: every joined label also counts
each side's confidence decile, its confidence sum and whether that side was right
(k<side>n/s/r, join.lua). From those: the expected calibration error per side, and the
estimated against the realised accuracy on the labelled rows. The estimate is `trusted`
only when enough labels arrived and neither side's realised accuracy falls outside the
estimate's interval on the labelled rows (a miscalibrated model is named in `reason`).
Whether the labelled rows are representative is tested apart: the two models' agreement
on labelled rows against all rows (a label arriving mostly for easy requests shows here).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from analysis import stats
from analysis.summaries import CONF_BINS, CONF_EDGES, MICRO, SEP, Summary

MIN_LABELLED = 30  # labelled rows per side before calibration is judged
Z = 1.959963984540054  # two-sided 95%
DECILES = 10
REPRESENTATIVE_P = 0.01  # labelled vs all agreement: below this, the labels are skewed
_MID = (CONF_EDGES[:-1] + CONF_EDGES[1:]) / 2


def expected_accuracy(n: int, conf_sum: float, hist: np.ndarray) -> dict[str, Any]:
    """Expected accuracy of n rows from their confidence sum, with the 95% interval its
    realised accuracy falls in when the model is calibrated (sum c(1-c) from the histogram:
    the bin midpoints give sum c^2)."""
    if n <= 0:
        return {"accuracy": None, "ci_low": None, "ci_high": None, "rows": 0}
    mean = conf_sum / n
    counts = np.asarray(hist, dtype=float)
    second = float((counts * _MID**2).sum()) if counts.sum() else mean * mean * n
    variance = max(conf_sum - second, 0.0) / (n * n)
    half = Z * math.sqrt(variance)
    return {
        "accuracy": mean,
        "ci_low": max(0.0, mean - half),
        "ci_high": min(1.0, mean + half),
        "rows": n,
    }


def moment_accuracy(n: int, first: float, second: float) -> dict[str, Any]:
    """Expected accuracy of n rows from the sums of their confidences and squares, with
    the 95% interval of the realised accuracy under calibration (sum c(1-c) / n^2)."""
    if n <= 0:
        return {"accuracy": None, "ci_low": None, "ci_high": None, "rows": 0}
    mean = first / n
    half = Z * math.sqrt(max(first - second, 0.0)) / n
    return {
        "accuracy": mean,
        "ci_low": max(0.0, mean - half),
        "ci_high": min(1.0, mean + half),
        "rows": n,
    }


def by_class(s: Summary) -> list[dict[str, Any]]:
    """Each side's estimated accuracy on the rows it predicted as each class (its
    precision there, under calibration), classes by rows, most first."""
    n, first, second = s.group("ekn"), s.group("eks"), s.group("ekq")
    classes = sorted({k.split(SEP, 1)[1] for k in n}, key=lambda c: (-_rows(n, c), c))
    out = []
    for cls in classes:
        row: dict[str, Any] = {"class": cls}
        for side, name in (("p", "primary"), ("c", "candidate")):
            key = f"{side}{SEP}{cls}"
            row[name] = moment_accuracy(
                int(n.get(key, 0)), first.get(key, 0) / MICRO, second.get(key, 0) / MICRO
            )
        out.append(row)
    return out


def _rows(n: dict[str, float | int], cls: str) -> int:
    return int(n.get(f"p{SEP}{cls}", 0)) + int(n.get(f"c{SEP}{cls}", 0))


def _side_estimate(s: Summary, side: str) -> dict[str, Any]:
    n, total = ("cpn", "cps") if side == "p" else ("ccn", "ccs")
    hist = s.hist("cp" if side == "p" else "cc", CONF_BINS)
    return expected_accuracy(s.get(n), s.get(total) / MICRO, hist)


def calibration(s: Summary, side: str) -> dict[str, Any]:
    """One side on its labelled rows: ECE over confidence deciles, and the estimated
    against the realised accuracy (with the estimate's interval, conservative: each
    decile's variance taken at its mean confidence)."""
    counts = s.hist(f"k{side}n", DECILES).astype(float)
    sums = s.hist(f"k{side}s", DECILES).astype(float) / MICRO
    right = s.hist(f"k{side}r", DECILES).astype(float)
    n = int(counts.sum())
    if n == 0:
        return {"labelled": 0, "ece": None, "estimated": None, "realised": None, "within": None}
    mean = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    half = Z * math.sqrt(float((counts * mean * (1 - mean)).sum())) / n
    estimated, realised = float(sums.sum() / n), float(right.sum() / n)
    return {
        "labelled": n,
        "ece": stats.expected_calibration_error(counts, right, sums),
        "estimated": estimated,
        "realised": realised,
        "within": abs(realised - estimated) <= half,
    }


def representativeness(s: Summary) -> dict[str, Any]:
    """Agreement on labelled rows against all rows; a small p: the labels are skewed."""
    labelled = sum(s.get(f) for f in ("la", "lb", "lc", "ld"))
    agree_l, rows, agree = s.get("lagree"), s.get("rows"), s.get("agree")
    if labelled == 0 or rows == 0 or agree_l > labelled:
        return {"labelled_agreement": None, "agreement": None, "p": None, "representative": None}
    p = stats.two_proportion_p(agree_l, labelled, agree, rows)
    return {
        "labelled_agreement": agree_l / labelled,
        "agreement": agree / rows,
        "p": p,
        "representative": p >= REPRESENTATIVE_P,
    }


def _verdict(sides: dict[str, dict[str, Any]]) -> tuple[bool, str]:
    """Trusted or not, and why, from each side's calibration check."""
    short = [k for k, c in sides.items() if c["labelled"] < MIN_LABELLED]
    if short:
        least = min(sides[k]["labelled"] for k in short)
        return False, f"calibration unchecked: {least} labelled rows, need {MIN_LABELLED}"
    off = [k for k, c in sides.items() if not c["within"]]
    if off:
        detail = ", ".join(
            f"{k} estimated {sides[k]['estimated']:.3f} vs realised {sides[k]['realised']:.3f}"
            for k in off
        )
        return False, f"miscalibrated on labelled rows: {detail}"
    return True, "calibration holds on labelled rows"


def estimated(s: Summary) -> dict[str, Any]:
    """The report's `estimated` section (see the module docstring)."""
    sides = {"primary": calibration(s, "p"), "candidate": calibration(s, "c")}
    trusted, reason = _verdict(sides)
    primary, candidate = _side_estimate(s, "p"), _side_estimate(s, "c")
    delta = None
    if primary["accuracy"] is not None and candidate["accuracy"] is not None:
        delta = candidate["accuracy"] - primary["accuracy"]
    return {
        "primary": primary,
        "candidate": candidate,
        "delta": delta,
        "by_class": by_class(s),
        "calibration": {
            "primary_ece": sides["primary"]["ece"],
            "candidate_ece": sides["candidate"]["ece"],
            "labelled": min(c["labelled"] for c in sides.values()),
            "primary": sides["primary"],
            "candidate": sides["candidate"],
        },
        "representative": representativeness(s),
        "trusted": trusted,
        "reason": reason,
    }


MIN_SLICE_ROWS = 30  # rows with both confidences before a slice gets estimated_delta


def slice_deltas(s: Summary, slice_rows: list[dict[str, Any]]) -> None:
    """Add `estimated_delta` to each slice row: the mean of d = conf_c - conf_p over its
    rows (the candidate's expected accuracy change there, under calibration), with the
    95% interval of that mean over the slice's requests (mean +- z sd(d) / sqrt(n),
    `estimated_delta_ci_low/high`); all None below MIN_SLICE_ROWS rows, the interval None
    for counters kept before the squares were (no `ces`: a zero increment is not stored,
    so a missing sum is 0, which only a slice with no spread at all is consistent with)."""
    n, total, squares = s.group("cen"), s.group("ce"), s.group("ces")
    for row in slice_rows:
        key = f"{row['slice']}{SEP}{row['value']}"
        rows = int(n.get(key, 0))
        mean = total.get(key, 0) / rows / MICRO if rows >= MIN_SLICE_ROWS else None
        row["estimated_delta"] = mean
        row["estimated_delta_ci_low"], row["estimated_delta_ci_high"] = _mean_interval(
            rows, mean, squares.get(key, 0.0)
        )


def _mean_interval(
    n: int, mean: float | None, squares: float | None
) -> tuple[float | None, float | None]:
    """95% interval of a mean from n and the sum of squares (micro-units)."""
    if mean is None or squares is None:
        return None, None
    variance = (squares / MICRO / n - mean * mean) * n / (n - 1)
    if variance < -1e-9:  # squares from an older, partial count
        return None, None
    half = Z * math.sqrt(max(variance, 0.0) / n)
    return max(-1.0, mean - half), min(1.0, mean + half)
