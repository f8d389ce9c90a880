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
  bucket together, so requests are not independent draws. The design effect of the tail
  indicator (request beyond the side's own p99) is measured from per-bucket counts
  (cluster-robust over binomial variance); counts are divided by it (effective sample
  size), which widens the sequence exactly where stalls cluster. A window with fewer
  than MIN_CLUSTERS buckets cannot measure it, and is not judged. For the candidate's
  lower bound (the one a fail rests on) its single worst bucket is set aside first
  (`set_aside_worst`): one stall cannot fail a twin, and does not cost power either.
- Noise floor: with a secondary replica of the primary mirrored like the candidate, the
  candidate is compared with the secondary (the same client, the same mirror path and
  the same measurement), not with the primary measured on the client's path.

The rule (`judge`), for ratio r = gate.max_p99_ratio, candidate bounds [Lc, Uc] and
reference bounds [Lr, Ur], each at alpha / 2 so both hold together at every look:
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
MIN_CLUSTERS = 3  # time buckets per side before a design effect, and a verdict, exist
MAX_DEFF = 100.0

PASS, FAIL, INSUFFICIENT = "pass", "fail", "insufficient"

__all__ = [
    "bucket_histograms",
    "compare",
    "design_effect",
    "judge",
    "quantile_cs",
    "set_aside_worst",
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


def design_effect(clusters: Sequence[np.ndarray], p: float = QUANTILE) -> float | None:
    """Variance inflation of the tail share from per-bucket histograms; None below
    MIN_CLUSTERS non-empty buckets.

    The tail is the pooled p-quantile's bin and those above it. Cluster-robust variance of a
    ratio estimate, sum_b (y_b - q n_b)^2 * B / (B - 1), over its binomial counterpart
    N q (1 - q); at least 1 (independence is the best case), at most MAX_DEFF.
    """
    rows = [np.asarray(h, dtype=float) for h in clusters if float(np.sum(h)) > 0]
    if len(rows) < MIN_CLUSTERS:
        return None
    pooled = np.sum(rows, axis=0)
    n_total = float(pooled.sum())
    cut = _tail_cut(pooled, p)
    n = np.array([r.sum() for r in rows])
    y = np.array([r[cut:].sum() for r in rows])  # from the quantile's bin: a stall fills it
    q = float(y.sum()) / n_total
    if q <= 0.0 or q >= 1.0:
        return 1.0
    robust = float(np.sum((y - q * n) ** 2)) * len(rows) / (len(rows) - 1)
    return min(max(robust / (n_total * q * (1.0 - q)), 1.0), MAX_DEFF)


def bucket_histograms(
    raws: Sequence[Mapping[bytes, bytes]], prefix: bytes, bins: int
) -> list[np.ndarray]:
    """One side's latency histogram per bucket hash (fields `<prefix><bin>`), in order."""
    out = []
    width = len(prefix)
    for raw in raws:
        h = np.zeros(bins, dtype=np.int64)
        for key, value in raw.items():
            if key.startswith(prefix):
                i = int(key[width:])
                if 0 <= i < bins:
                    h[i] += int(value)
        if h.any():
            out.append(h)
    return out


def _tail_cut(pooled: np.ndarray, p: float) -> int:
    """The bin holding the pooled p-quantile."""
    return int(np.searchsorted(np.cumsum(pooled), p * float(pooled.sum()), side="left"))


def set_aside_worst(
    hist: np.ndarray, clusters: Sequence[np.ndarray], p: float = QUANTILE
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The histogram and clusters without the bucket with the largest tail share.

    One stall must not fail a twin: for the candidate's *lower* bound (the one a fail
    rests on) its worst bucket is set aside. Dropping the most tail-heavy bucket can only
    pull the tail down, so the lower bound stays on the safe side; any further stall
    still shows in the design effect of the buckets that remain. Unchanged when there
    are no more than MIN_CLUSTERS buckets (nothing can be spared).
    """
    rows = [np.asarray(h) for h in clusters if np.any(h)]
    if len(rows) <= MIN_CLUSTERS:
        return np.asarray(hist), rows
    cut = _tail_cut(np.sum(rows, axis=0), p)
    shares = [float(r[cut:].sum()) / float(r.sum()) for r in rows]
    worst = int(np.argmax(shares))
    return np.asarray(hist) - rows[worst], rows[:worst] + rows[worst + 1 :]


def _side(
    hist: np.ndarray,
    clusters: Sequence[np.ndarray],
    edges: np.ndarray,
    alpha: float,
    spare_worst: bool = False,
) -> dict[str, Any]:
    """One side's p99 bounds at alpha, with the design effect they were widened by; with
    `spare_worst`, the lower bound is taken without the worst bucket (set_aside_worst)."""
    deff = design_effect(clusters)
    low, high = quantile_cs(hist, edges, QUANTILE, alpha, deff or 1.0)
    if spare_worst and deff is not None:
        kept, rest = set_aside_worst(hist, clusters)
        low = quantile_cs(kept, edges, QUANTILE, alpha, design_effect(rest) or 1.0)[0]
    return {
        "n": int(np.sum(hist)),
        "buckets": sum(1 for h in clusters if np.any(h)),
        "design_effect": deff,
        "p99_low": low,
        "p99_high": high,
    }


def compare(
    candidate: tuple[np.ndarray, Sequence[np.ndarray]],
    reference: tuple[np.ndarray, Sequence[np.ndarray]],
    edges: np.ndarray,
    reference_name: str,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """Both sides' anytime-valid p99 bounds, each at alpha / 2 (jointly at alpha).

    Each side is (merged histogram, per-bucket histograms). `reference_name` says what
    the candidate is measured against ("primary", or the secondary replica's name).
    """
    return {
        "reference": reference_name,
        "alpha": alpha,
        "candidate": _side(candidate[0], candidate[1], edges, alpha / 2.0, spare_worst=True),
        "reference_side": _side(reference[0], reference[1], edges, alpha / 2.0),
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
    deffs = [s["design_effect"] for s in (cand, ref)]
    if None in deffs:
        fewest = min(cand["buckets"], ref["buckets"])
        return INSUFFICIENT, (
            f"{text}); only {fewest} time bucket(s) so far: stalls cannot be told from"
            f" slowness before {MIN_CLUSTERS}"
        )
    text += f", stall design effects {deffs[0]:.2g} and {deffs[1]:.2g})"
    lc, uc, lr, ur = cand["p99_low"], cand["p99_high"], ref["p99_low"], ref["p99_high"]
    if lc is not None and ur is not None and lc > max_ratio * ur:
        return FAIL, f"{text}: above {max_ratio:g}x the {name}'s whatever the noise"
    if uc is not None and lr is not None and uc <= max_ratio * lr:
        return PASS, f"{text}: within {max_ratio:g}x the {name}'s"
    return INSUFFICIENT, f"{text}: cannot tell yet whether it is within {max_ratio:g}x"
