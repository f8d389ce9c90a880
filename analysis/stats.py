"""Pure statistics behind a shadowtrial report: numpy/scipy in, plain numbers out.

Every function here works on merged additive state (counts, sums, histograms, Welford
triples), never on raw events, so any window, any number of workers, gives one answer.
Methods and defaults: the statistics notes (docs/statistics.md); the anytime-valid
bounds and tests the gate judges on are in analysis.sequential. Primary and candidate answer
the same request, so the paired tests (McNemar, Stuart-Maxwell, sign test) are the
right ones; independent-sample statistics (KS, PSI, JS, W1) are effect sizes only.

Conventions: a flip matrix has the primary's class on rows and the candidate's on
columns. Undefined values are ``nan``; an interval with no information is the whole range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
from scipy import stats
from scipy.special import rel_entr

Interval = tuple[float, float]

NAN = float("nan")
ECE_BINS = 15  # equal-width confidence bins for expected calibration error
DIFFY_RELATIVE_EXCESS = 0.2  # Diffy's field rule: a 20% relative excess over noise ...
DIFFY_ABSOLUTE_EXCESS = 0.0003  # ... and at least 0.03 percentage points absolute
# SliceLine's error-vs-size weight. SystemDS defaults to 0.5, but with 0/1 errors the score
# at 0.5 is 0.5 * (n / |S|) * (err_S / err_total - 1) <= 0 for every slice, so "keep
# sc > 0" would never keep anything. At 0.95 a slice holding 20% of traffic qualifies once
# its error rate is about 1.2x the mean, one holding 1% once it is about 6x.
SLICELINE_ALPHA = 0.95

__all__ = [
    "ECE_BINS",
    "SLICELINE_ALPHA",
    "Interval",
    "accuracy_comparison",
    "benjamini_hochberg",
    "class_mix_shift_p",
    "cohens_kappa",
    "confidence_sequence",
    "cs_rho",
    "expected_calibration_error",
    "hist_mean",
    "hist_quantile",
    "js_distance_hist",
    "ks_distance_hist",
    "ks_p_hist",
    "latency_bin_index",
    "latency_quantiles",
    "log_latency_edges",
    "mcnemar_exact",
    "mean_interval",
    "per_class_flip_rates",
    "phi_effect",
    "psi_hist",
    "sign_test",
    "slice_tests",
    "sliceline_score",
    "stuart_maxwell",
    "two_proportion_p",
    "wasserstein_hist",
    "welford_merge",
    "wilson_interval",
]


def _z(alpha: float) -> float:
    """Two-sided normal critical value; NormalDist is exact enough and far cheaper."""
    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


def _rate(x: float, n: float) -> float:
    """x / n, or nan when there is nothing to divide by (undefined, not zero)."""
    return float(x) / float(n) if n > 0 else NAN


# --------------------------------------------------------------------------------------
# Proportions: fixed-n and anytime-valid intervals
# --------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> Interval:
    """Wilson score interval: keeps its coverage near 0 and 1, where disagreement lives."""
    if n <= 0:
        return (0.0, 1.0)
    z = _z(alpha)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n)) / (1.0 + z2n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def cs_rho(t_opt: int, alpha: float = 0.05) -> float:
    """Normal-mixture tuning rho that makes the CS tightest at t_opt (Howard et al. 2021).

    For [0, 1]-valued observations the intrinsic time is V_t = t / 4.
    """
    log_term = 2.0 * math.log(1.0 / alpha)
    return (t_opt / 4.0) / (log_term + math.log1p(log_term))


def _cs_half_width(t: float, alpha: float, rho: float) -> float:
    """Two-sided normal-mixture boundary divided by t: the CS half-width at time t."""
    v = t / 4.0
    return math.sqrt((v + rho) * (math.log1p(v / rho) + 2.0 * math.log(1.0 / alpha))) / t


def confidence_sequence(
    successes: int, n: int, alpha: float = 0.05, t_opt: int = 10_000
) -> Interval:
    """Anytime-valid interval for a rate: safe to read after every batch, unlike Wilson.

    Howard, Ramdas, McAuliffe, Sekhon (Ann. Stat. 2021), normal mixture, sub-Gaussian
    with V_t = t / 4; wider than Wilson (about 0.015 vs 0.0098 at t = 10,000).
    """
    if n <= 0:
        return (0.0, 1.0)
    half = _cs_half_width(float(n), alpha, cs_rho(t_opt, alpha))
    p = successes / n
    return (max(0.0, p - half), min(1.0, p + half))


# --------------------------------------------------------------------------------------
# The flip matrix (rows: primary's class, columns: candidate's class)
# --------------------------------------------------------------------------------------


def _square(matrix: np.ndarray) -> np.ndarray:
    """Validate and convert a confusion matrix of counts to float."""
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"flip matrix must be square, got shape {m.shape}")
    return m


def _drop_empty(m: np.ndarray) -> np.ndarray:
    """Remove classes neither model predicted; they carry no information and are singular."""
    keep = (m.sum(axis=0) + m.sum(axis=1)) > 0
    return m[np.ix_(keep, keep)]


def cohens_kappa(matrix: np.ndarray) -> float:
    """Agreement beyond chance; nan when chance agreement is total (one class only)."""
    m = _square(matrix)
    n = m.sum()
    if n <= 0:
        return NAN
    p_observed = np.trace(m) / n
    p_expected = float(m.sum(axis=1) @ m.sum(axis=0)) / (n * n)
    if p_expected >= 1.0:
        return NAN
    return float((p_observed - p_expected) / (1.0 - p_expected))


def per_class_flip_rates(matrix: np.ndarray, labels: list[str], min_count: int = 32) -> list[dict]:
    """Per class: how often the candidate leaves it (flip-out) and wrongly joins it (flip-in).

    ``enough`` is true when either model predicted the class at least ``min_count``
    times, so a class the candidate stops predicting altogether still counts.
    """
    m = np.rint(_square(matrix)).astype(np.int64)
    if len(labels) != m.shape[0]:
        raise ValueError(f"{len(labels)} labels for a {m.shape[0]}-class flip matrix")
    rows = []
    for k, label in enumerate(labels):
        primary_count = int(m[k].sum())
        candidate_count = int(m[:, k].sum())
        out_low, out_high = wilson_interval(primary_count - int(m[k, k]), primary_count)
        in_low, in_high = wilson_interval(candidate_count - int(m[k, k]), candidate_count)
        rows.append(
            {
                "label": label,
                "primary_count": primary_count,
                "flip_out": _rate(primary_count - m[k, k], primary_count),
                "flip_out_ci_low": out_low,
                "flip_out_ci_high": out_high,
                "candidate_count": candidate_count,
                "flip_in": _rate(candidate_count - m[k, k], candidate_count),
                "flip_in_ci_low": in_low,
                "flip_in_ci_high": in_high,
                "enough": max(primary_count, candidate_count) >= min_count,
            }
        )
    return rows


def mcnemar_exact(b: int, c: int) -> float:
    """Paired test on the discordant counts: exact binomial when small, else corrected chi2."""
    n = b + c
    if n <= 0:
        return 1.0
    if n < 25:
        return float(min(1.0, 2.0 * stats.binom.cdf(min(b, c), n, 0.5)))
    statistic = (abs(b - c) - 1.0) ** 2 / n
    return float(stats.chi2.sf(statistic, 1))


def stuart_maxwell(matrix: np.ndarray) -> float:
    """Marginal homogeneity for K paired classes: did the predicted-class mix move?

    Drops empty classes; a singular covariance (e.g. a class only ever agreed on) uses
    the pseudo-inverse with degrees of freedom equal to its rank.
    """
    m = _drop_empty(_square(matrix))
    if m.shape[0] <= 1:
        return 1.0
    # One class is redundant (margins sum to n): drop the last, as statsmodels does.
    row, col = m.sum(axis=1)[:-1], m.sum(axis=0)[:-1]
    inner = m[:-1, :-1]
    cov = -(inner + inner.T)
    np.fill_diagonal(cov, row + col - 2.0 * np.diag(inner))
    df = int(np.linalg.matrix_rank(cov))
    if df == 0:
        return 1.0
    diff = row - col
    statistic = float(diff @ np.linalg.pinv(cov) @ diff)
    return float(stats.chi2.sf(max(statistic, 0.0), df))


def class_mix_shift_p(matrix: np.ndarray) -> float:
    """McNemar when two classes are in use, Stuart-Maxwell for more."""
    m = _drop_empty(_square(matrix))
    if m.shape[0] <= 1:
        return 1.0
    if m.shape[0] == 2:
        return mcnemar_exact(int(np.rint(m[0, 1])), int(np.rint(m[1, 0])))
    return stuart_maxwell(m)


# --------------------------------------------------------------------------------------
# Paired deltas (confidence shift)
# --------------------------------------------------------------------------------------


def sign_test(positives: int, negatives: int) -> float:
    """Two-sided binomial test on the signs of paired deltas (ties already excluded)."""
    n = positives + negatives
    if n <= 0:
        return 1.0
    return float(stats.binomtest(positives, n, 0.5).pvalue)


def welford_merge(
    a: tuple[float, float, float], b: tuple[float, float, float]
) -> tuple[float, float, float]:
    """Merge two (n, mean, M2) states with Chan's formula, so buckets and workers add up."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    if n <= 0:
        return (0.0, 0.0, 0.0)
    delta = mean_b - mean_a
    mean = mean_a + delta * n_b / n
    m2 = m2_a + m2_b + delta * delta * n_a * n_b / n
    return (float(n), float(mean), float(m2))


def mean_interval(n: float, mean: float, m2: float, alpha: float = 0.05) -> Interval:
    """Normal interval for a mean from Welford state; nan until a variance exists."""
    if n < 2:
        return (NAN, NAN)
    se = math.sqrt(max(m2, 0.0) / (n - 1.0) / n)
    z = _z(alpha)
    return (mean - z * se, mean + z * se)


# --------------------------------------------------------------------------------------
# Slices: each slice against its complement, BH across slices
# --------------------------------------------------------------------------------------


def two_proportion_p(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided test of x1/n1 vs x2/n2: pooled z when expected cells >= 5, else Fisher."""
    if not (0 <= x1 <= n1 and 0 <= x2 <= n2):
        raise ValueError(f"invalid counts: {x1}/{n1} vs {x2}/{n2}")
    n, x = n1 + n2, x1 + x2
    if n1 == 0 or n2 == 0 or x == 0 or x == n:
        return 1.0
    smallest_expected = min(n1, n2) * min(x, n - x) / n
    if smallest_expected < 5:
        table = [[x1, n1 - x1], [x2, n2 - x2]]
        return float(stats.fisher_exact(table, alternative="two-sided").pvalue)
    pooled = x / n
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    z = (x1 / n1 - x2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2.0))  # == 2 * (1 - Phi(|z|)), no cancellation


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """BH step-up adjusted p-values (monotone, capped at 1); nan stays nan and is not counted."""
    p = np.asarray(pvalues, dtype=float).ravel()
    adjusted = np.full(p.shape, NAN)
    present = ~np.isnan(p)
    m = int(present.sum())
    if m == 0:
        return adjusted
    values = p[present]
    order = np.argsort(values, kind="stable")
    scaled = values[order] * m / np.arange(1, m + 1)
    monotone = np.minimum.accumulate(scaled[::-1])[::-1]
    result = np.empty(m)
    result[order] = np.minimum(monotone, 1.0)
    adjusted[present] = result
    return adjusted


def phi_effect(d_slice: float, d_rest: float, d_all: float) -> float:
    """SliceFinder's effect size: the slice/complement gap in units of the overall spread."""
    if d_all <= 0.0 or d_all >= 1.0:
        return 0.0
    return (d_slice - d_rest) / math.sqrt(d_all * (1.0 - d_all))


def _slice_row(row: dict, total_pairs: int, total_disagree: int) -> dict:
    """Everything about one slice that does not depend on the other slices."""
    pairs, disagree = int(row["pairs"]), int(row["disagree"])
    rest_pairs, rest_disagree = total_pairs - pairs, total_disagree - disagree
    d_slice = _rate(disagree, pairs)
    d_rest = _rate(rest_disagree, rest_pairs)
    d_all = _rate(total_disagree, total_pairs)
    ci_low, ci_high = wilson_interval(pairs - disagree, pairs)
    return {
        **row,
        "agreement": 1.0 - d_slice,
        "complement_agreement": 1.0 - d_rest,
        "delta_vs_overall": (1.0 - d_slice) - (1.0 - d_all),
        "p": two_proportion_p(disagree, pairs, rest_disagree, rest_pairs),
        "p_adj": None,
        "phi": phi_effect(d_slice, d_rest, d_all) if pairs and rest_pairs else 0.0,
        "risk_ratio": d_slice / d_all if d_all > 0 else NAN,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "flagged": False,
    }


def is_slice_flagged(row: dict, q: float, min_phi: float, min_drop: float | None) -> bool:
    """Significant after BH, worse than the complement, and large enough to matter."""
    drop = row["complement_agreement"] - row["agreement"]
    if not (row["p_adj"] < q and drop > 0):
        return False
    return row["phi"] >= min_phi or (min_drop is not None and drop >= min_drop)


def slice_tests(
    slices: list[dict],
    total_pairs: int,
    total_disagree: int,
    min_support: int = 32,
    q: float = 0.05,
    min_phi: float = 0.2,
    min_drop: float | None = None,
) -> list[dict]:
    """Test every slice against its complement; flag only significant, large, worse ones.

    Rows below ``min_support`` are returned for display with ``p``/``p_adj`` None and
    never flagged. ``min_drop`` is an absolute agreement drop versus the complement.
    Rows also carry ``complement_agreement``.
    """
    rows = [_slice_row(s, total_pairs, total_disagree) for s in slices]
    testable = [r for r in rows if r["pairs"] >= min_support]
    for r in rows:
        if r["pairs"] < min_support:
            r["p"] = None
    adjusted = benjamini_hochberg([r["p"] for r in testable])
    for r, p_adj in zip(testable, adjusted, strict=True):
        r["p_adj"] = float(p_adj)
        r["flagged"] = is_slice_flagged(r, q, min_phi, min_drop)
    return rows


# --------------------------------------------------------------------------------------
# Slice discovery (SliceLine levels 1 and 2, confirmed by the slice test)
# --------------------------------------------------------------------------------------


def sliceline_score(
    size: np.ndarray,
    err_sum: np.ndarray,
    total_n: int,
    total_err: float,
    alpha: float = SLICELINE_ALPHA,
) -> np.ndarray:
    """SliceLine score: error concentration traded against slice size (Sagadeeva & Boehm).

    sc = alpha * (e_S / e - 1) - (1 - alpha) * (n / |S| - 1). Empty slices, or no error
    at all, score -inf so they are never kept. See SLICELINE_ALPHA for the default.
    """
    sizes = np.asarray(size, dtype=float)
    errors = np.asarray(err_sum, dtype=float)
    if total_n <= 0 or total_err <= 0:
        return np.full(sizes.shape, -np.inf)
    mean_error = total_err / total_n
    safe = np.where(sizes > 0, sizes, 1.0)
    score = alpha * ((errors / safe) / mean_error - 1.0) - (1.0 - alpha) * (total_n / safe - 1.0)
    return np.where(sizes > 0, score, -np.inf)


# --------------------------------------------------------------------------------------
# Histograms: fixed bins, merged by addition
# --------------------------------------------------------------------------------------


def _probabilities(counts: np.ndarray) -> np.ndarray | None:
    """Normalise counts to probabilities, or None for an empty histogram."""
    c = np.asarray(counts, dtype=float)
    total = c.sum()
    return c / total if total > 0 else None


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Both histograms as probabilities over the same bins, or None if either is empty."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"histograms differ in shape: {np.shape(a)} vs {np.shape(b)}")
    pa, pb = _probabilities(a), _probabilities(b)
    if pa is None or pb is None:
        return None
    return pa, pb


def _midpoints(edges: np.ndarray) -> np.ndarray:
    e = np.asarray(edges, dtype=float)
    return (e[:-1] + e[1:]) / 2.0


def hist_mean(counts: np.ndarray, edges: np.ndarray) -> float:
    """Mean of a binned distribution, each bin at its midpoint (exact to half a bin)."""
    p = _probabilities(counts)
    if p is None:
        return NAN
    return float(p @ _midpoints(edges))


def hist_quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """Quantile from a histogram, linear within the bin that holds it; nan when empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    c = np.asarray(counts, dtype=float)
    e = np.asarray(edges, dtype=float)
    total = c.sum()
    if total <= 0:
        return NAN
    cumulative = np.cumsum(c)
    target = q * total
    # The first non-empty bin whose cumulative count reaches the target (else the last).
    reached = np.flatnonzero((cumulative >= target) & (c > 0))
    i = int(reached[0]) if reached.size else int(np.flatnonzero(c > 0)[-1])
    fraction = (target - (cumulative[i] - c[i])) / c[i]
    return float(e[i] + min(max(fraction, 0.0), 1.0) * (e[i + 1] - e[i]))


def ks_distance_hist(a: np.ndarray, b: np.ndarray) -> float:
    """Largest gap between the two empirical CDFs at the shared bin edges."""
    pair = _pair(a, b)
    if pair is None:
        return NAN
    return float(np.max(np.abs(np.cumsum(pair[0]) - np.cumsum(pair[1]))))


def ks_p_hist(a: np.ndarray, b: np.ndarray) -> float:
    """Asymptotic two-sample KS p-value (as scipy's ks_2samp, method="asymp").

    Assumes independent samples: on paired primary/candidate outputs it is not a valid
    test, only a rough scale for the KS distance.
    """
    d = ks_distance_hist(a, b)
    if math.isnan(d):
        return NAN
    n, m = float(np.sum(a)), float(np.sum(b))
    effective_n = round(n * m / (n + m))
    if effective_n < 1:
        return 1.0
    return float(min(1.0, max(0.0, stats.kstwo.sf(d, effective_n))))


def wasserstein_hist(a: np.ndarray, b: np.ndarray, edges: np.ndarray) -> float:
    """W1 between binned distributions (mass at midpoints) in units of a's spread."""
    pair = _pair(a, b)
    if pair is None:
        return NAN
    pa, pb = pair
    mids = _midpoints(edges)
    cdf_gap = np.abs(np.cumsum(pa) - np.cumsum(pb))[:-1]
    w1 = float(cdf_gap @ np.diff(mids))
    std_a = math.sqrt(float(pa @ (mids - pa @ mids) ** 2))
    return w1 / max(std_a, 0.001)


def js_distance_hist(a: np.ndarray, b: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2: bounded in [0, 1] and defined with empty bins."""
    pair = _pair(a, b)
    if pair is None:
        return NAN
    pa, pb = pair
    mix = (pa + pb) / 2.0
    divergence = (rel_entr(pa, mix).sum() + rel_entr(pb, mix).sum()) / (2.0 * math.log(2.0))
    return math.sqrt(max(float(divergence), 0.0))


def psi_hist(a: np.ndarray, b: np.ndarray, floor: float = 1e-4) -> float:
    """Population stability index of b against a; empty bins take ``floor`` (as Evidently)."""
    pair = _pair(a, b)
    if pair is None:
        return NAN
    pa, pb = (np.where(p == 0, floor, p) for p in pair)
    return float(np.sum((pb - pa) * np.log(pb / pa)))


def log_latency_edges(
    lo_ms: float = 0.05, hi_ms: float = 120_000.0, rel_accuracy: float = 0.01
) -> np.ndarray:
    """Log-spaced latency bin edges, each bin (1 + rel_accuracy) times the previous.

    A quantile interpolated inside a bin is then within ``rel_accuracy`` of any value in
    that bin. Fixed and deterministic so histograms from any worker add up.
    """
    if not (0 < lo_ms < hi_ms and 0 < rel_accuracy < 1):
        raise ValueError(f"bad latency edges: lo={lo_ms}, hi={hi_ms}, acc={rel_accuracy}")
    bins = math.ceil(math.log(hi_ms / lo_ms) / math.log1p(rel_accuracy))
    return lo_ms * (1.0 + rel_accuracy) ** np.arange(bins + 1)


def latency_bin_index(latency_ms: np.ndarray | float, edges: np.ndarray) -> np.ndarray:
    """Bin of each latency; values outside the range land in the first or last bin."""
    index = np.searchsorted(edges, latency_ms, side="right") - 1
    return np.clip(index, 0, len(edges) - 2)


def latency_quantiles(
    counts: np.ndarray, edges: np.ndarray, qs: Sequence[float] = (0.5, 0.95, 0.99)
) -> dict[str, float | None]:
    """Named quantiles ("p50", "p99.9", ...) from a latency histogram; None when empty."""
    empty = float(np.sum(counts)) <= 0
    return {
        f"p{round(q * 100, 6):g}": None if empty else hist_quantile(counts, edges, q) for q in qs
    }


# --------------------------------------------------------------------------------------
# Noise floor and ground truth
# --------------------------------------------------------------------------------------


def accuracy_comparison(a: int, b: int, c: int, d: int) -> dict:
    """Paired accuracy on labelled pairs: b = negative flips, c = positive flips.

    The delta interval uses the paired standard error sqrt(b + c - (b - c)^2 / n) / n.
    """
    n = a + b + c + d
    if n <= 0:
        return {
            "n": 0,
            "primary_accuracy": NAN,
            "candidate_accuracy": NAN,
            "delta": NAN,
            "delta_ci_low": NAN,
            "delta_ci_high": NAN,
            "negative_flip_rate": NAN,
            "mcnemar_p": 1.0,
        }
    delta = (c - b) / n
    half = _z(0.05) * math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    return {
        "n": n,
        "primary_accuracy": (a + b) / n,
        "candidate_accuracy": (a + c) / n,
        "delta": delta,
        "delta_ci_low": delta - half,
        "delta_ci_high": delta + half,
        "negative_flip_rate": b / n,
        "mcnemar_p": mcnemar_exact(b, c),
    }


def expected_calibration_error(
    conf_counts: np.ndarray, correct_counts: np.ndarray, conf_sums: np.ndarray
) -> float:
    """ECE: count-weighted |accuracy - mean confidence| over the (15) confidence bins."""
    counts = np.asarray(conf_counts, dtype=float)
    correct = np.asarray(correct_counts, dtype=float)
    sums = np.asarray(conf_sums, dtype=float)
    if not counts.shape == correct.shape == sums.shape:
        raise ValueError("calibration arrays must have the same shape")
    total = counts.sum()
    if total <= 0:
        return NAN
    # sum_b (n_b / N) |acc_b - conf_b| == sum_b |correct_b - conf_sum_b| / N
    return float(np.abs(correct - sums).sum() / total)
