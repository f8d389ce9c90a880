"""Latency judged against its own noise: anytime-valid p99 bounds from mergeable histograms.

The gate may be read at any moment, so the p99 comparison is made on confidence
sequences, not on point estimates: a p99 of a thousand requests is a dozen requests.

- Quantile confidence sequence (Howard & Ramdas, "Sequential estimation of quantiles
  with applications to A/B-testing", Bernoulli 2022): at the true p-quantile the number
  of requests at or below it is a Binomial(t, p) sum, so a beta-binomial mixture
  martingale M_t(s) bounds it at every t at once (Ville: P(sup_t M_t >= 1/alpha) <=
  alpha). The counts s it accepts map, through the histogram's cumulative counts, to
  [low, high] on the latency axis, rounded outwards to whole bins (1% wide).
- Time buckets as clusters: a stall (a GC pause, a busy host) slows every request of a
  bucket together, so requests are not independent draws. The design effect of the
  candidate's tail share minus the reference's (a request in or above its side's p99
  bin), bucket by bucket, is measured from per-bucket counts (cluster-robust over
  binomial variance): a slow minute of the host hits both sides and cancels, a stall of
  the candidate alone does not. Counts are divided by it (an effective sample size).
  One stall must not fail a twin: the bounds a fail rests on (the candidate's lower, the
  reference's upper) are taken without the candidate's worst bucket (`worst_bucket`);
  a second stall still shows in the design effect. A window with fewer than
  MIN_CLUSTERS + 1 buckets (one to spare, three to measure) is not judged.
- Noise floor: with a secondary replica of the primary mirrored like the candidate, the
  candidate is compared with the secondary (the same client, the same mirror path and
  the same measurement), not with the primary measured on the client's path.

The rule (`judge`), for ratio r = gate.max_p99_ratio, candidate bounds [Lc, Uc] and
reference bounds [Lr, Ur], so that the two bounds each verdict rests on hold together
at every look with probability >= 1 - alpha (a pass's at alpha / 2 each; a fail's split
FAIL_ALPHA_SPLIT, each with the smaller of the paired and its own side's design effect):
fail when Lc > r * Ur (the candidate's p99 is beyond r times the reference's whatever
the noise), pass when Uc <= r * Lr, otherwise insufficient.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import betainc, betaincc, betaln

QUANTILE = 0.99
ALPHA = 0.05
T_OPT = 2_000  # the mixture is tightest around this many requests (where the rule decides)
MIN_CLUSTERS = 3  # time buckets before a design effect exists (a verdict needs one more)
MAX_DEFF = 100.0
# How a fail's alpha is shared between its two bounds (the candidate's lower p99, the
# reference's upper p99). The reference's upper bound is the wider one on a right-skewed
# latency, so it gets the larger share; each still holds at every look at its own level,
# and the two add up to alpha. Measured in benchmarks/RESULTS.md ("Raising the power").
FAIL_ALPHA_SPLIT = (0.3, 0.7)

PASS, FAIL, INSUFFICIENT = "pass", "fail", "insufficient"

__all__ = [
    "bucket_histograms",
    "compare",
    "design_effect",
    "judge",
    "paired_design_effect",
    "quantile_cs",
    "worst_bucket",
]


def _log_mixture(s: float, t: float, p: float, a: float, b: float, below: bool) -> float:
    """log M_t(s): the beta(a, b)-binomial mixture over the Binomial(t, p) likelihood, the
    prior truncated to theta < p (`below`: evidence that s is too small) or theta > p.

    One-sided: each bound holds at its own alpha, so the rule spends alpha / 2 on each of
    the two bounds a verdict rests on. The truncated mixture is a ratio of incomplete
    beta functions: B(a + s, b + t - s) I_p(a + s, b + t - s) / (B(a, b) I_p(a, b)).
    """
    log_p, log_q = math.log(p), math.log1p(-p)
    if below:
        mass, prior = betainc(a + s, b + t - s, p), betainc(a, b, p)
    else:
        mass, prior = betaincc(a + s, b + t - s, p), betaincc(a, b, p)
    if mass <= 0.0:
        return -math.inf
    return (
        betaln(a + s, b + t - s) + math.log(mass) - betaln(a, b) - math.log(prior)
        - s * log_p - (t - s) * log_q
    )  # fmt: skip


def _prior(p: float, alpha: float, t_opt: int) -> tuple[float, float]:
    """Beta prior centred on p, as concentrated as the normal mixture tuned for t_opt.

    A normal mixture is tightest at V = t_opt p (1 - p) with rho = V / (2 log(1/alpha) +
    log(1 + 2 log(1/alpha))) (Howard et al. 2021); a beta prior of mean p and
    concentration m has variance p (1 - p) / (m + 1), matching it at m = rho / p(1-p).
    """
    log_term = 2.0 * math.log(1.0 / alpha)
    m = max(t_opt / (log_term + math.log1p(log_term)), 2.0)
    return p * m, (1.0 - p) * m


@functools.lru_cache(maxsize=4096)
def _accepted_counts(t: float, p: float, alpha: float, t_opt: int) -> tuple[float, float]:
    """[s_lo, s_hi]: the counts at or below the p-quantile the sequence still accepts.

    log M_t is convex in s with its minimum near t p: bisect each side for the crossing
    of log(1 / alpha). A side where even s = 0 (or s = t) is accepted has no bound there.
    """
    a, b = _prior(p, alpha, t_opt)
    threshold = math.log(1.0 / alpha)
    centre = min(max(t * p, 0.0), t)

    def crossing(inside: float, outside: float, below: bool) -> float:
        if _log_mixture(outside, t, p, a, b, below) < threshold:
            return outside
        while abs(outside - inside) > 0.01:  # a hundredth of a request is plenty
            mid = (inside + outside) / 2.0
            if _log_mixture(mid, t, p, a, b, below) < threshold:
                inside = mid
            else:
                outside = mid
        return inside

    return crossing(centre, 0.0, True), crossing(centre, t, False)


def quantile_cs(
    counts: np.ndarray,
    edges: np.ndarray,
    p: float = QUANTILE,
    alpha: float = ALPHA,
    deff: float = 1.0,
    t_opt: int = T_OPT,
) -> tuple[float | None, float | None]:
    """Anytime-valid (low, high) for the p-quantile of a latency histogram.

    None where the data cannot bound it yet (high is None until enough requests are in:
    about 300 for the p99). Counts are divided by `deff` (>= 1) before the martingale
    sees them, and the accepted range is scaled back.
    """
    c = np.asarray(counts, dtype=float)
    total = float(c.sum())
    if total <= 0:
        return None, None
    deff = max(float(deff), 1.0)
    s_lo, s_hi = _accepted_counts(total / deff, p, alpha, t_opt)
    cumulative = np.cumsum(c)
    e = np.asarray(edges, dtype=float)
    low = None
    if s_lo > 0:  # x below the edge of the bin where the count reaches s_lo is rejected
        i = int(np.searchsorted(cumulative, s_lo * deff, side="left"))
        low = float(e[min(i, len(c) - 1)])
    high = None
    if s_hi * deff < total:  # x at the top of the first bin past s_hi is rejected
        i = int(np.searchsorted(cumulative, s_hi * deff, side="right"))
        high = float(e[min(i, len(c) - 1) + 1])
    return low, high


Clusters = Mapping[int, np.ndarray]  # bucket start -> that bucket's latency histogram


def _tail(clusters: Clusters, p: float) -> tuple[dict[int, float], dict[int, float], float]:
    """Per non-empty bucket: requests, and requests in or above the pooled p-quantile's
    bin (a stall fills that bin); and the pooled tail share."""
    if not clusters:
        return {}, {}, 0.0
    keys = list(clusters)
    rows = np.stack([clusters[k] for k in keys])  # exact integer counts
    pooled = rows.sum(axis=0)
    if pooled.sum() <= 0:
        return {}, {}, 0.0
    cut = _tail_cut(pooled, p)
    n, y = rows.sum(axis=1), rows[:, cut:].sum(axis=1)
    kept = [i for i in range(len(keys)) if n[i] > 0]
    return (
        {keys[i]: float(n[i]) for i in kept},
        {keys[i]: float(y[i]) for i in kept},
        float(y.sum()) / float(pooled.sum()),
    )


def design_effect(clusters: Clusters, p: float = QUANTILE) -> float | None:
    """Variance inflation of one side's tail share from its per-bucket histograms; None
    below MIN_CLUSTERS non-empty buckets.

    Cluster-robust variance of a ratio estimate, sum_b (y_b - q n_b)^2 * B / (B - 1),
    over its binomial counterpart N q (1 - q); at least 1, at most MAX_DEFF.
    """
    return paired_design_effect(clusters, None, p)


def paired_design_effect(
    candidate: Clusters, reference: Clusters | None, p: float = QUANTILE
) -> float | None:
    """The design effect of the candidate's tail share minus the reference's, bucket by
    bucket (None below MIN_CLUSTERS buckets on either side).

    Both sides are timed in the same buckets: a slow minute of the host (a busy CPU, a
    loop stall in the proxy) raises both tails together and cancels in the difference,
    which is what the rule compares; a stall of the candidate alone does not cancel.
    Without a reference it is one side's own design effect.
    """
    n_c, y_c, q_c = _tail(candidate, p)
    n_r, y_r, q_r = _tail(reference or {}, p)
    if len(n_c) < MIN_CLUSTERS or (reference is not None and len(n_r) < MIN_CLUSTERS):
        return None
    total_c, total_r = sum(n_c.values()), sum(n_r.values()) or 1.0
    keys = set(n_c) | set(n_r)
    residuals = np.array(
        [
            (y_c.get(k, 0.0) - q_c * n_c.get(k, 0.0)) / total_c
            - (y_r.get(k, 0.0) - q_r * n_r.get(k, 0.0)) / total_r
            for k in keys
        ]
    )
    binomial = q_c * (1.0 - q_c) / total_c + (q_r * (1.0 - q_r) / total_r if n_r else 0.0)
    if binomial <= 0.0:
        return 1.0
    robust = float(np.sum(residuals**2)) * len(keys) / (len(keys) - 1)
    return min(max(robust / binomial, 1.0), MAX_DEFF)


def bucket_histograms(
    raws: Sequence[tuple[int, Mapping[bytes, bytes]]],
    bins: int,
    sides: Sequence[str] = ("lp", "lc"),
) -> dict[str, dict[int, np.ndarray]]:
    """Each side's latency histogram per bucket, from (bucket start, bucket hash) pairs whose
    fields are `<side>:<bin>`; one pass over each hash, empty buckets left out."""
    prefixes = {f"{side}:".encode(): side for side in sides}
    out: dict[str, dict[int, np.ndarray]] = {side: {} for side in sides}
    for start, raw in raws:
        found: dict[str, np.ndarray] = {}
        for key, value in raw.items():
            side = prefixes.get(key[:3])
            if side is None:
                continue
            i = int(key[3:])
            if 0 <= i < bins:
                h = found.get(side)
                if h is None:
                    h = found[side] = np.zeros(bins, dtype=np.int64)
                h[i] += int(value)
        for side, h in found.items():
            same = out[side].get(start)
            out[side][start] = h if same is None else same + h
    return out


def _tail_cut(pooled: np.ndarray, p: float) -> int:
    """The bin holding the pooled p-quantile."""
    return int(np.searchsorted(np.cumsum(pooled), p * float(pooled.sum()), side="left"))


def worst_bucket(clusters: Clusters, p: float = QUANTILE) -> int | None:
    """The bucket with the largest tail share, when more than MIN_CLUSTERS can spare it.

    One stall must not fail a twin: the candidate's *lower* bound (the one a fail rests
    on) is taken without this bucket. Setting the most tail-heavy bucket aside can only
    pull the tail down, so that bound stays on the safe side; a further stall still
    shows in the design effect of the buckets that remain.
    """
    n, y, _ = _tail(clusters, p)
    if len(n) <= MIN_CLUSTERS:
        return None
    return max(n, key=lambda k: (y[k] / n[k], k))


def _smaller(a: float | None, b: float | None) -> float | None:
    """The smaller design effect of two, ignoring one that could not be measured."""
    known = [x for x in (a, b) if x is not None]
    return min(known) if known else None


def _bounds(
    hist: np.ndarray, deff: float | None, edges: np.ndarray, alpha: float
) -> tuple[float | None, float | None]:
    return quantile_cs(hist, edges, QUANTILE, alpha, deff or 1.0)


def _side(hist: np.ndarray, clusters: Clusters, deff: float | None) -> dict[str, Any]:
    return {
        "n": int(np.sum(hist)),
        "buckets": len(clusters),  # bucket_histograms keeps only non-empty ones
        "design_effect": deff,
    }


def compare(
    candidate: tuple[np.ndarray, Clusters],
    reference: tuple[np.ndarray, Clusters],
    edges: np.ndarray,
    reference_name: str,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """Both sides' anytime-valid p99 bounds, each at alpha / 2 (jointly at alpha), widened
    by the paired design effect; the candidate's lower bound without its worst bucket.

    Each side is (merged histogram, {bucket start: histogram}). `reference_name` says
    what the candidate is measured against ("primary", or the secondary replica's name).
    """
    (hc, cc), (hr, cr) = candidate, reference
    deff = paired_design_effect(cc, cr)
    worst = worst_bucket(cc) if deff is not None else None
    if worst is None:  # no bucket to spare yet: not judged (judge says so)
        deff = None
    c_low, c_high = _bounds(hc, deff, edges, alpha / 2.0)
    r_low, r_high = _bounds(hr, deff, edges, alpha / 2.0)
    if worst is not None:  # the bounds a fail rests on, without the worst time bucket
        rest = {k: h for k, h in cc.items() if k != worst}
        others = {k: h for k, h in cr.items() if k != worst}
        spared = paired_design_effect(rest, others)
        c_alpha, r_alpha = FAIL_ALPHA_SPLIT[0] * alpha, FAIL_ALPHA_SPLIT[1] * alpha
        c_deff = _smaller(spared, design_effect(rest))
        c_low = _bounds(np.asarray(hc) - cc[worst], c_deff, edges, c_alpha)[0]
        reference_rest = np.asarray(hr) - cr[worst] if worst in cr else np.asarray(hr)
        r_high = _bounds(reference_rest, _smaller(spared, design_effect(others)), edges, r_alpha)[1]
    return {
        "reference": reference_name,
        "alpha": alpha,
        "set_aside_bucket": worst,
        "candidate": {**_side(hc, cc, deff), "p99_low": c_low, "p99_high": c_high},
        "reference_side": {**_side(hr, cr, deff), "p99_low": r_low, "p99_high": r_high},
    }


def _ms(x: float | None) -> str:
    return "unbounded" if x is None else f"{x:.1f} ms"


def judge(sequential: Mapping[str, Any], max_ratio: float) -> tuple[str, str]:
    """(outcome, detail) of the latency rule on `compare`'s result; see the module doc."""
    cand, ref = sequential["candidate"], sequential["reference_side"]
    name = sequential["reference"]
    text = (
        f"candidate p99 within [{_ms(cand['p99_low'])}, {_ms(cand['p99_high'])}] against"
        f" the {name}'s [{_ms(ref['p99_low'])}, {_ms(ref['p99_high'])}]"
        f" (anytime-valid {100 * (1 - sequential['alpha']):g}% bounds, {cand['n']:,} and"
        f" {ref['n']:,} requests"
    )
    deff = cand["design_effect"]
    if deff is None:
        fewest = min(cand["buckets"], ref["buckets"])
        return INSUFFICIENT, (
            f"{text}); only {fewest} time bucket(s) so far: stalls cannot be told from"
            f" slowness before {MIN_CLUSTERS + 1}"
        )
    text += f", stall design effect {deff:.2g})"
    lc, uc, lr, ur = cand["p99_low"], cand["p99_high"], ref["p99_low"], ref["p99_high"]
    if lc is not None and ur is not None and lc > max_ratio * ur:
        return FAIL, f"{text}: above {max_ratio:g}x the {name}'s whatever the noise"
    if uc is not None and lr is not None and uc <= max_ratio * lr:
        return PASS, f"{text}: within {max_ratio:g}x the {name}'s"
    return INSUFFICIENT, f"{text}: cannot tell yet whether it is within {max_ratio:g}x"
