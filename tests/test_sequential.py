"""Anytime-valid statistics (analysis.sequential, analysis.anytime_slices): reference values
and small seeded checks. The full-size measurements are in benchmarks/evidence_bench.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import betaln

from analysis import anytime_slices, sequential, stats
from analysis.sequential import RequestMoments


def test_beta_binomial_cs_is_the_level_set_of_the_mixture() -> None:
    low, high = sequential.beta_binomial_cs(30, 1000)
    for p in (low, high):  # at each end the mixture martingale is exactly 1 / alpha
        log_m = betaln(30.5, 970.5) - betaln(0.5, 0.5) - 30 * math.log(p) - 970 * math.log1p(-p)
        assert log_m == pytest.approx(math.log(20), abs=1e-6)
    assert low < 0.03 < high
    assert sequential.beta_binomial_cs(0, 100)[0] == 0.0
    assert sequential.beta_binomial_cs(100, 100)[1] == 1.0
    assert sequential.beta_binomial_cs(0, 0) == (0.0, 1.0)


def test_tight_where_the_variance_is_small() -> None:
    """97% against 95% passes by ~1,500 rows (the t/4 CS needed ~5,900), 99 vs 98 by ~2,300."""

    def rows_to_pass(agreement: float, minimum: float, bound) -> int:
        n = 100
        while bound(round(agreement * n), n)[0] < minimum:
            n += 50
        return n

    new_97 = rows_to_pass(0.97, 0.95, sequential.beta_binomial_cs)
    new_99 = rows_to_pass(0.99, 0.98, sequential.beta_binomial_cs)
    old_97 = rows_to_pass(0.97, 0.95, stats.confidence_sequence)
    assert new_97 <= 1_500 < 5_000 < old_97
    assert new_99 <= 2_500


def test_beta_binomial_cs_covers_at_every_look() -> None:
    rng = np.random.default_rng(7)
    runs, looks = 100, np.arange(100, 5_001, 100)
    misses = 0
    for _ in range(runs):
        hits = np.cumsum(rng.random(5_000) < 0.03)[looks - 1]
        misses += any(
            not (lo <= 0.03 <= hi)
            for lo, hi in (
                sequential.beta_binomial_cs(int(k), int(t))
                for k, t in zip(hits, looks, strict=True)
            )
        )
    assert misses <= 0.05 * runs


def test_design_effect_measures_the_intra_request_correlation() -> None:
    """8-row requests with correlation 0.2 between their rows: about 1 + 7 * 0.2 = 2.4."""
    rng = np.random.default_rng(11)
    n, m, rate, icc = 20_000, 8, 0.06, 0.2
    total = 1 / icc - 1
    k = rng.binomial(m, rng.beta(rate * total, (1 - rate) * total, n))
    moments = RequestMoments(
        n, n * m, int(k.sum()), n * m * m, int((k * k).sum()), int(m * k.sum())
    )
    assert moments.design_effect() == pytest.approx(2.4, rel=0.08)
    independent = rng.binomial(m, rate, n)
    flat = RequestMoments(
        n, n * m, int(independent.sum()), n * m * m, int((independent**2).sum()),
        int(m * independent.sum()),
    )  # fmt: skip
    assert flat.design_effect() == pytest.approx(1.0, abs=0.05)
    assert RequestMoments(1, 8, 2, 64, 4, 16).design_effect() == 1.0  # one request: unknown


def test_e_bh_is_bh_on_inverse_e_values() -> None:
    e = [400.0, 1.0, 30.0, 0.5, 25.0]
    expected = stats.benjamini_hochberg([min(1.0, 1 / x) for x in e])
    assert sequential.e_bh(e) == pytest.approx(list(expected))
    assert sequential.e_bh([]) == []


def test_one_sided_e_value_grows_with_evidence_and_stays_small_without() -> None:
    assert sequential.one_sided_e_value(-3.0, 1_000) < 0.1
    assert sequential.one_sided_e_value(0.0, 1_000) < 1.0
    assert sequential.one_sided_e_value(5.0, 1_000) > 20.0
    assert sequential.one_sided_e_value(5.0, 1_000) < sequential.one_sided_e_value(6.0, 1_000)
    assert sequential.one_sided_e_value(float("nan"), 10) == 1.0


def test_one_sided_e_value_is_an_e_value_under_the_null() -> None:
    """Ville: under the null the running e-value exceeds 20 in at most 5% of runs."""
    rng = np.random.default_rng(3)
    runs, steps = 400, 200
    walks = np.cumsum(rng.standard_normal((runs, steps)), axis=1)
    t = np.arange(1, steps + 1)
    z = walks / np.sqrt(t)
    crossed = sum(
        any(
            sequential.one_sided_e_value(float(z[r, j]), float(t[j]), 50) >= 20
            for j in range(steps)
        )
        for r in range(runs)
    )
    assert crossed <= 0.05 * runs


def test_slice_e_value_accounts_for_the_design_effect() -> None:
    """The same gap is weaker evidence when rows come in correlated batches."""
    independent = anytime_slices.slice_e_value(400, 50, 4000, 300, 1.0)
    clustered = anytime_slices.slice_e_value(400, 50, 4000, 300, 2.4)
    assert independent > 20 > clustered > 1


def test_discovery_labels_unconfirmed_slices_as_hints() -> None:
    strong = {"conditions": [["country", "XX"]], "pairs": 800, "disagree": 200}
    weak = {"conditions": [["device", "m"]], "pairs": 900, "disagree": 110}
    found = anytime_slices.discover([strong, weak], 4000, 400)
    status = {r["conditions"][0][1]: r["status"] for r in found}
    assert status == {"XX": "confirmed", "m": "hint"}


def test_excess_cs_and_paired_flips() -> None:
    same = RequestMoments(1000, 8000, 480, 64_000, 600, 3840)
    excess = sequential.excess_cs(same, same)
    assert excess["excess"] == 0 and excess["ci_low"] < 0 < excess["ci_high"] < 0.05
    assert sequential.excess_cs(RequestMoments(0, 0, 0, 0, 0, 0), same)["ci_low"] == -1.0
    flips = sequential.paired_flips_cs(60, 20, 2000)
    assert flips["negative_share_cs"][0] > 0.5  # clearly more negative flips
    assert flips["delta_cs_high"] < 0 < 0.75 - flips["negative_share_cs"][1] + 0.2
    none = sequential.paired_flips_cs(0, 0, 100)
    assert none["negative_share_cs"] is None and none["delta_cs_low"] < 0 < none["delta_cs_high"]


def test_vectorised_slice_e_values_match_the_scalar_ones() -> None:
    pairs = np.array([400, 400, 900, 4000, 0, 800, 32])
    disagree = np.array([50, 45, 110, 300, 0, 200, 0])
    many = anytime_slices.slice_e_values(pairs, disagree, 4000, 300, 2.4)
    one = [
        anytime_slices.slice_e_value(int(p), int(d), 4000, 300, 2.4)
        for p, d in zip(pairs, disagree, strict=True)
    ]
    assert many.tolist() == pytest.approx(one, rel=1e-9)
