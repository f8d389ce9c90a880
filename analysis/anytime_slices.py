"""Slices judged at any look: one e-value per slice, e-BH across them, discovery labelled.

A slice is flagged when its disagreement exceeds the rest of the traffic's, tested with a
one-sided normal-mixture e-value whose variance is cluster-robust (the design effect of
the request-level moments), and only when it survives e-BH across every tested slice.
Discovery scores level-1 and level-2 slices with SliceLine, and calls a found slice
`confirmed` only when it survives e-BH over every scored candidate (not just SliceLine's
survivors, which were chosen for looking bad on these very pairs); otherwise it is a
`hint`. See the statistics notes (docs/statistics.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import log_ndtr

from analysis import sequential, stats

SLICE_T_OPT = 500.0  # effective rows of a slice where its e-value grows fastest
CONFIRMED, HINT = "confirmed", "hint"

__all__ = ["CONFIRMED", "HINT", "discover", "judge_slices", "slice_e_value", "slice_e_values"]


def slice_e_value(
    pairs: int, disagree: int, total_pairs: int, total_disagree: int, design_effect: float
) -> float:
    """E-value against "this slice disagrees no more than the rest of the traffic".

    Rows of a request share its difficulty, so both variances carry the design effect
    and the slice's intrinsic time is its effective rows, pairs / design effect.
    """
    rest_pairs, rest_disagree = total_pairs - pairs, total_disagree - disagree
    if pairs <= 0 or rest_pairs <= 0:
        return 1.0
    gap = disagree / pairs - rest_disagree / rest_pairs
    variance = sequential.rate_variance(disagree, pairs, design_effect)
    variance += sequential.rate_variance(rest_disagree, rest_pairs, design_effect)
    z = gap / math.sqrt(variance)
    return sequential.one_sided_e_value(z, pairs / design_effect, SLICE_T_OPT)


def slice_e_values(
    pairs: np.ndarray, disagree: np.ndarray, total_pairs: int, total_disagree: int, deff: float
) -> np.ndarray:
    """slice_e_value for many slices at once (discovery scores thousands of level-2 pairs)."""
    pairs, disagree = np.asarray(pairs, dtype=float), np.asarray(disagree, dtype=float)
    ok = (pairs > 0) & (total_pairs - pairs > 0)
    # Slices without a complement (or empty) get e = 1; give them harmless stand-in counts.
    pairs, disagree = np.where(ok, pairs, 2.0), np.where(ok, disagree, 1.0)
    safe_pairs, safe_rest = pairs, np.where(ok, total_pairs - pairs, 2.0)
    rest_disagree = np.where(ok, total_disagree - disagree, 1.0)
    gap = disagree / safe_pairs - rest_disagree / safe_rest
    shrunk_s = (disagree + 0.5) / (safe_pairs + 1.0)
    shrunk_c = (rest_disagree + 0.5) / (safe_rest + 1.0)
    variance = deff * (
        shrunk_s * (1 - shrunk_s) / safe_pairs + shrunk_c * (1 - shrunk_c) / safe_rest
    )
    t = safe_pairs / deff
    rho = sequential.mixture_rho(SLICE_T_OPT)
    scale = gap / np.sqrt(variance) * np.sqrt(t) / np.sqrt(t + rho)
    log_e = math.log(2.0) + 0.5 * np.log(rho / (t + rho)) + scale * scale / 2.0 + log_ndtr(scale)
    e = np.exp(np.minimum(log_e, math.log(sequential.E_MAX)))
    return np.where(ok, e, 1.0)


def _make_anytime(out: dict, total_pairs: int, total_disagree: int, deff: float) -> dict:
    """A fixed-sample row of stats.slice_tests, its interval and p made anytime-valid."""
    pairs, disagree = int(out["pairs"]), int(out["disagree"])
    e = slice_e_value(pairs, disagree, total_pairs, total_disagree, deff)
    low, high = sequential.beta_binomial_cs((pairs - disagree) / deff, pairs / deff)
    out.update(e_value=e, p=min(1.0, 1.0 / e) if e > 0 else 1.0, ci_low=low, ci_high=high)
    return out


def judge_slices(
    slices: list[dict],
    total_pairs: int,
    total_disagree: int,
    design_effect: float = 1.0,
    min_support: int = 32,
    q: float = sequential.ALPHA,
    min_phi: float = 0.2,
    min_drop: float | None = None,
) -> list[dict]:
    """Every slice against its complement, anytime-valid; same keys as stats.slice_tests.

    `p` is the anytime-valid p-value 1/e, `p_adj` its e-BH adjustment over the slices with
    at least `min_support` rows; a slice is flagged when p_adj < q, it is worse than the
    rest, and the gap is large (phi >= min_phi, or a drop >= min_drop).
    """
    fixed = stats.slice_tests(slices, total_pairs, total_disagree, min_support=1)
    rows = [_make_anytime(r, total_pairs, total_disagree, design_effect) for r in fixed]
    testable = [r for r in rows if r["pairs"] >= min_support]
    for r in rows:
        if r["pairs"] < min_support:
            r.update(p=None, p_adj=None, flagged=False)
    adjusted = sequential.e_bh([r["e_value"] for r in testable], q)
    for r, p_adj in zip(testable, adjusted, strict=True):
        r["p_adj"] = p_adj
        r["flagged"] = stats.is_slice_flagged(r, q, min_phi, min_drop)
    return rows


def _key(conditions: Sequence[Sequence[object]]) -> tuple:
    return tuple(tuple(c) for c in conditions)


def _beats_parents(candidate: dict, score: float, by_key: dict[tuple, float]) -> bool:
    """A pair slice earns its place only by scoring above each single-condition parent."""
    conditions = candidate["conditions"]
    if len(conditions) < 2:
        return True
    return all(score > by_key.get(_key([c]), -math.inf) for c in conditions)


def discover(
    candidates: list[dict],
    total_pairs: int,
    total_disagree: int,
    design_effect: float = 1.0,
    k: int = 4,
    min_support: int = 32,
    q: float = sequential.ALPHA,
) -> list[dict]:
    """SliceLine's top k, each `confirmed` (e-BH over every scored candidate) or a `hint`.

    Candidates are level-1 and level-2 slices ({conditions, pairs, disagree}). Every one
    with `min_support` rows is scored and tested, so the correction counts every slice
    SliceLine looked at, not only the ones it kept.
    """
    scored = [c for c in candidates if c["pairs"] >= min_support]
    if not scored or total_disagree <= 0:
        return []
    sizes = np.array([c["pairs"] for c in scored], dtype=float)
    errors = np.array([c["disagree"] for c in scored], dtype=float)
    scores = stats.sliceline_score(sizes, errors, total_pairs, total_disagree)
    by_key = {  # single conditions only: the parents a pair slice must beat
        _key(c["conditions"]): float(sc)
        for c, sc in zip(scored, scores, strict=True)
        if len(c["conditions"]) == 1
    }
    e_values = slice_e_values(sizes, errors, total_pairs, total_disagree, design_effect).tolist()
    adjusted = sequential.e_bh(e_values, q)
    found = [
        {
            "conditions": c["conditions"],
            "pairs": int(c["pairs"]),
            "agreement": 1.0 - c["disagree"] / c["pairs"],
            "score": float(score),
            "e_value": e,
            "p_adj": p_adj,
            "status": CONFIRMED if p_adj < q else HINT,
        }
        for c, score, e, p_adj in zip(scored, scores, e_values, adjusted, strict=True)
        if score > 0 and _beats_parents(c, float(score), by_key)
    ]
    found.sort(key=lambda r: (-r["score"], -r["pairs"]))
    return found[:k]
