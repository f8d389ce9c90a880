"""Anytime-valid statistics: bounds and tests that keep their error rate however often read.

The gate is re-read by people, the page and the automation at any moment, so every
bound it judges on is a confidence sequence (a CS covers the truth at every look at once,
with probability 1 - alpha) and every test an e-process (an e-value is a bet against the
null that pays 1/alpha with probability at most alpha, at any stopping time). Everything
is computed from merged additive counters, never from an ordered stream: N workers and
any bucket order give one answer. The methods and their measured error rates are in the
statistics notes (docs/statistics.md):

- Bernoulli rates: the conjugate beta-binomial mixture CS (Howard, Ramdas, McAuliffe &
  Sekhon, Ann. Stat. 2021, section 3.3): exact for independent rows and tight where the
  variance is small (97% against 95% passes after about 1,300 rows, not 5,900).
- The request is the unit: rows of one batched request share its difficulty, so counts
  are shrunk by the design effect measured from request-level moments (cluster-robust
  variance over binomial variance) before entering a bound.
- Differences (candidate vs noise floor, slice vs complement): the asymptotic CS and its
  one-sided normal-mixture e-value (Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, Ann.
  Stat. 2024), with a plug-in variance.
- Many slices: e-BH (Wang & Ramdas, JRSS-B 2022), which is BH applied to 1/e and controls
  the false discovery rate under any dependence between the e-values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from scipy.optimize import brentq
from scipy.special import betaln

Interval = tuple[float, float]

ALPHA = 0.05
# Beta(1/2, 1/2) (Jeffreys) mixing prior: its mass near 0 and 1 keeps the CS tight where
# disagreement lives (a few percent); measured against Beta(1, 1) in docs/statistics.md.
PRIOR = (0.5, 0.5)
E_MAX = 1e300  # e-values are capped to stay finite in JSON

_PHI = NormalDist()

__all__ = [
    "ALPHA",
    "RequestMoments",
    "beta_binomial_cs",
    "difference_cs",
    "e_bh",
    "excess_cs",
    "mixture_radius",
    "mixture_rho",
    "one_sided_e_value",
    "paired_flips_cs",
    "rate_variance",
]


@dataclass(frozen=True)
class RequestMoments:
    """Request-level counters of one stream: per request i with m_i rows, k_i of them
    disagreeing, the sums n (requests), M = sum m, K = sum k, sum m^2, sum k^2, sum m*k.

    They are additive, so a window's moments are the sum of its buckets'.
    """

    requests: int
    rows: int
    hits: int
    mm: int
    kk: int
    mk: int

    @property
    def rate(self) -> float:
        """K / M: the row-level rate (nan without rows)."""
        return self.hits / self.rows if self.rows else math.nan

    def design_effect(self) -> float:
        """Cluster-robust variance of K/M over the variance independent rows would give.

        sum_i (k_i - D m_i)^2 (times n / (n - 1)) against M D (1 - D); at least 1, and 1
        when it cannot be measured (fewer than 2 requests, or a rate of 0 or 1). Rows
        that share a request's difficulty (intra-request correlation rho, m rows each)
        give about 1 + (m - 1) rho.
        """
        n, d = self.requests, self.rate
        if n < 2 or not 0.0 < d < 1.0:
            return 1.0
        clustered = (self.kk - 2.0 * d * self.mk + d * d * self.mm) * n / (n - 1.0)
        return max(1.0, clustered / (self.rows * d * (1.0 - d)))


def _log_mixture(p: float, x: float, n: float, prior: tuple[float, float]) -> float:
    """log of the beta-binomial mixture martingale at p after x successes in n trials."""
    a, b = prior
    return betaln(a + x, b + n - x) - betaln(a, b) - x * math.log(p) - (n - x) * math.log1p(-p)


def beta_binomial_cs(
    successes: float, n: float, alpha: float = ALPHA, prior: tuple[float, float] = PRIOR
) -> Interval:
    """Anytime-valid interval for a Bernoulli rate: {p : mixture martingale < 1/alpha}.

    Counts may be fractional (effective counts after a design effect). The set is an
    interval around x/n because the log-likelihood is concave in p.
    """
    if n <= 0:
        return (0.0, 1.0)
    x = min(max(successes, 0.0), n)
    threshold = math.log(1.0 / alpha)
    centre = min(max(x / n, 1e-12), 1.0 - 1e-12)

    def excess(p: float) -> float:
        return _log_mixture(p, x, n, prior) - threshold

    low = 0.0 if excess(1e-15) < 0 else brentq(excess, 1e-15, centre, xtol=1e-12)
    high = 1.0 if excess(1.0 - 1e-15) < 0 else brentq(excess, centre, 1.0 - 1e-15, xtol=1e-12)
    return (float(low), float(high))


def mixture_rho(t_opt: float, alpha: float = ALPHA) -> float:
    """Normal-mixture precision that makes the boundary tightest at intrinsic time t_opt."""
    log_term = 2.0 * math.log(1.0 / alpha)
    return t_opt / (log_term + math.log1p(log_term))


def mixture_radius(variance: float, t: float, alpha: float = ALPHA, t_opt: float = 2_000) -> float:
    """Half-width of the two-sided asymptotic CS for an estimate with this variance.

    Standardised to unit variance per unit, the sum after t units is S_t with V_t = t,
    and the normal-mixture boundary sqrt((t + rho)(log(1 + t / rho) + 2 log(1 / alpha)))
    bounds |S_t| at every t at once (Waudby-Smith et al. 2024); dividing by t and scaling
    by the estimate's standard error sqrt(variance * t) gives the radius.
    """
    if t <= 0 or variance <= 0:
        return math.inf if t <= 0 else 0.0
    rho = mixture_rho(t_opt, alpha)
    width = math.sqrt((t + rho) * (math.log1p(t / rho) + 2.0 * math.log(1.0 / alpha)))
    return math.sqrt(variance / t) * width


def one_sided_e_value(z: float, t: float, t_opt: float = 1_000, alpha: float = ALPHA) -> float:
    """E-value against "the effect is at most 0" from a z-score after t effective units.

    S = z sqrt(t), V = t, mixed over lambda >= 0 with a half-normal of precision rho:
    E = 2 sqrt(rho / (t + rho)) exp(S^2 / (2 (t + rho))) Phi(S / sqrt(t + rho)).
    """
    if t <= 0 or not math.isfinite(z):
        return 1.0 if not (math.isfinite(z) and z > 0) else E_MAX
    rho = mixture_rho(t_opt, alpha)
    s = z * math.sqrt(t)
    scale = s / math.sqrt(t + rho)
    cdf = _PHI.cdf(scale)
    if cdf <= 0.0:
        return 0.0
    log_e = math.log(2.0) + 0.5 * math.log(rho / (t + rho)) + scale * scale / 2.0 + math.log(cdf)
    return math.exp(min(log_e, math.log(E_MAX)))


def rate_variance(hits: float, rows: float, design_effect: float = 1.0) -> float:
    """Variance of a clustered rate's estimate, with the rate shrunk by half a count so it
    never vanishes (no disagreement yet is not certainty of none)."""
    if rows <= 0:
        return math.inf
    shrunk = (hits + 0.5) / (rows + 1.0)
    return shrunk * (1.0 - shrunk) * design_effect / rows


def difference_cs(
    estimate: float, variance: float, t: float, alpha: float = ALPHA, t_opt: float = 2_000
) -> Interval:
    """Asymptotic CS for a difference of two rates (sum of their variances)."""
    radius = mixture_radius(variance, t, alpha, t_opt)
    return (estimate - radius, estimate + radius)


def e_bh(e_values: list[float], q: float = ALPHA) -> list[float]:
    """e-BH adjusted p-values: BH applied to p = min(1, 1/e); reject where below q.

    Wang & Ramdas (2022): valid for FDR under arbitrary dependence between e-values,
    which slices of one stream certainly have.
    """
    m = len(e_values)
    if m == 0:
        return []
    p = [min(1.0, 1.0 / e) if e > 0 else 1.0 for e in e_values]
    order = sorted(range(m), key=p.__getitem__)
    adjusted = [1.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        adjusted[i] = min(running, 1.0)
    return adjusted


EXCESS_T_OPT = 10_000.0  # effective rows at which the excess bound is tightest
LABELS_T_OPT = 2_000.0  # labelled pairs at which the accuracy-change bound is tightest


def excess_cs(raw: RequestMoments, noise: RequestMoments, alpha: float = ALPHA) -> dict:
    """Disagreement beyond a secondary replica's (Diffy's noise floor), anytime-valid.

    The two rates' cluster-robust variances add (treating the streams as independent is
    conservative: both see the same hard requests); the intrinsic time is the smaller
    stream's effective rows. `real` is Diffy's field rule: a relative excess above 20% and
    an absolute one above 0.03 points.
    """
    if raw.rows <= 0 or noise.rows <= 0:
        return {"excess": math.nan, "ci_low": -1.0, "ci_high": 1.0,
                "relative_excess": math.nan, "real": False}  # fmt: skip
    deff_raw, deff_noise = raw.design_effect(), noise.design_effect()
    d_raw, d_noise = raw.rate, noise.rate
    variance = rate_variance(raw.hits, raw.rows, deff_raw)
    variance += rate_variance(noise.hits, noise.rows, deff_noise)
    t = min(raw.rows / deff_raw, noise.rows / deff_noise)
    excess = d_raw - d_noise
    low, high = difference_cs(excess, variance, t, alpha, EXCESS_T_OPT)
    relative = abs(excess) / (d_raw + d_noise) if d_raw + d_noise > 0 else 0.0
    return {
        "excess": excess,
        "ci_low": max(low, -1.0),
        "ci_high": min(high, 1.0),
        "relative_excess": relative,
        "real": excess > 0.0003 and relative > 0.2,
        "anytime": True,
    }


def paired_flips_cs(negative: int, positive: int, n: int, alpha: float = ALPHA) -> dict:
    """Anytime-valid bounds on labelled pairs: the sequential McNemar and the accuracy change.

    Under "no loss" a discordant pair is a negative flip with probability at most 1/2, so
    the beta-binomial CS on b / (b + c) is a sequential McNemar (fail when its lower bound
    is above 1/2). The change (c - b) / n is a mean of paired values in {-1, 0, 1}: its
    asymptotic CS uses their variance (b + c) / n - change^2, with the discordant share
    shrunk by one pair so that no flips yet is not certainty. Each statement gets half
    of alpha.
    """
    share = beta_binomial_cs(negative, negative + positive, alpha / 2)
    if n <= 0:
        return {"negative_share_cs": None, "delta_cs_low": None, "delta_cs_high": None}
    change = (positive - negative) / n
    variance = max((negative + positive + 1.0) / (n + 2.0) - change * change, 1.0 / (n + 2.0))
    low, high = difference_cs(change, variance / n, n, alpha / 2, LABELS_T_OPT)
    return {
        "negative_share_cs": list(share) if negative + positive else None,
        "delta_cs_low": max(low, -1.0),
        "delta_cs_high": min(high, 1.0),
    }
