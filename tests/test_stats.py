"""analysis.stats against reference implementations and hand-computed values on fixed data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.contingency_tables import SquareTable, mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint, proportions_ztest

from analysis import anytime_slices, sequential
from analysis import stats as st
from analysis.sequential import RequestMoments

# A fixed 3-class flip matrix (rows: primary, columns: candidate), no empty cells.
FLIPS_3 = np.array([[120, 9, 4], [14, 85, 6], [3, 11, 48]])


def _expand(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-request labels that produce ``matrix`` as their confusion matrix."""
    k = matrix.shape[0]
    primary = np.repeat(np.repeat(np.arange(k), k), matrix.ravel())
    candidate = np.repeat(np.tile(np.arange(k), k), matrix.ravel())
    return primary, candidate


# --- proportions --------------------------------------------------------------------


@pytest.mark.parametrize(("x", "n"), [(0, 10), (1, 10), (7, 40), (500, 1000), (9999, 10000)])
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_wilson_matches_statsmodels(x: int, n: int, alpha: float) -> None:
    expected = proportion_confint(x, n, alpha=alpha, method="wilson")
    assert st.wilson_interval(x, n, alpha) == pytest.approx(expected, abs=1e-12)


def test_wilson_without_data_is_the_whole_range() -> None:
    assert st.wilson_interval(0, 0) == (0.0, 1.0)


def test_cs_rho_and_half_width_at_t_opt() -> None:
    assert st.cs_rho(10_000) == pytest.approx(315.0, abs=0.5)
    low, high = st.confidence_sequence(5_000, 10_000)
    assert (high - low) / 2 == pytest.approx(0.0152, abs=0.0005)
    wilson_low, wilson_high = st.wilson_interval(5_000, 10_000)
    assert (wilson_high - wilson_low) / 2 == pytest.approx(0.0098, abs=0.0001)


def test_cs_matches_the_normal_mixture_formula() -> None:
    rho = st.cs_rho(10_000)
    t, x = 2_500, 300
    v = t / 4
    half = math.sqrt((v + rho) * (math.log(1 + v / rho) + 2 * math.log(1 / 0.05))) / t
    assert st.confidence_sequence(x, t) == pytest.approx((x / t - half, x / t + half))


def test_cs_is_clipped_and_wider_than_wilson() -> None:
    assert st.confidence_sequence(0, 0) == (0.0, 1.0)
    low, high = st.confidence_sequence(1, 200)
    assert low == 0.0
    assert high < 1.0
    for t in (100, 1_000, 50_000):
        cs_low, cs_high = st.confidence_sequence(t // 2, t)
        w_low, w_high = st.wilson_interval(t // 2, t)
        assert cs_low < w_low
        assert cs_high > w_high


# --- flip matrix ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "matrix",
    [FLIPS_3, np.array([[40, 10], [5, 45]]), np.array([[10, 0, 0], [0, 5, 1], [0, 0, 0]])],
)
def test_kappa_matches_sklearn(matrix: np.ndarray) -> None:
    primary, candidate = _expand(matrix)
    assert st.cohens_kappa(matrix) == pytest.approx(cohen_kappa_score(primary, candidate))


def test_kappa_undefined_cases() -> None:
    assert math.isnan(st.cohens_kappa(np.zeros((3, 3))))
    assert math.isnan(st.cohens_kappa(np.array([[50, 0], [0, 0]])))
    with pytest.raises(ValueError, match="square"):
        st.cohens_kappa(np.ones((2, 3)))


def test_per_class_flip_rates() -> None:
    rows = st.per_class_flip_rates(FLIPS_3, ["cat", "dog", "ERR"], min_count=100)
    cat, dog, err = rows
    assert cat["label"] == "cat"
    assert cat["primary_count"] == 133
    assert cat["flip_out"] == pytest.approx(13 / 133)
    assert (cat["flip_out_ci_low"], cat["flip_out_ci_high"]) == pytest.approx(
        proportion_confint(13, 133, method="wilson")
    )
    assert cat["candidate_count"] == 137
    assert cat["flip_in"] == pytest.approx(17 / 137)
    assert (cat["flip_in_ci_low"], cat["flip_in_ci_high"]) == pytest.approx(
        proportion_confint(17, 137, method="wilson")
    )
    assert dog["flip_out"] == pytest.approx(20 / 105)
    assert dog["flip_in"] == pytest.approx(20 / 105)
    assert [r["enough"] for r in rows] == [True, True, False]
    assert err["flip_out"] == pytest.approx(14 / 62)


def test_flip_rates_of_a_class_the_candidate_dropped() -> None:
    rows = st.per_class_flip_rates(np.array([[60, 40], [0, 0]]), ["a", "b"])
    b = rows[1]
    assert b["primary_count"] == 0
    assert math.isnan(b["flip_out"])
    assert (b["flip_out_ci_low"], b["flip_out_ci_high"]) == (0.0, 1.0)
    assert b["flip_in"] == 1.0
    assert b["enough"] is True
    with pytest.raises(ValueError, match="labels"):
        st.per_class_flip_rates(FLIPS_3, ["a", "b"])


@pytest.mark.parametrize(("b", "c"), [(0, 0), (3, 9), (12, 12), (1, 20), (40, 25), (150, 90)])
def test_mcnemar_matches_statsmodels(b: int, c: int) -> None:
    table = [[100, b], [c, 100]]
    exact = b + c < 25
    expected = mcnemar(table, exact=exact, correction=True).pvalue if b + c else 1.0
    assert st.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_detects_a_lopsided_split() -> None:
    assert st.mcnemar_exact(2, 20) < 0.001
    assert st.mcnemar_exact(20, 22) > 0.5


@pytest.mark.parametrize(
    "matrix",
    [
        FLIPS_3,
        np.array([[50, 3, 2, 1], [8, 40, 2, 2], [1, 6, 30, 4], [2, 2, 9, 25]]),
        np.array([[30, 4], [12, 50]]),
    ],
)
def test_stuart_maxwell_matches_statsmodels(matrix: np.ndarray) -> None:
    expected = SquareTable(matrix, shift_zeros=False).homogeneity("stuart_maxwell").pvalue
    assert st.stuart_maxwell(matrix) == pytest.approx(expected, rel=1e-9)


def test_stuart_maxwell_edge_cases() -> None:
    padded = np.zeros((5, 5))
    padded[:3, :3] = FLIPS_3
    assert st.stuart_maxwell(padded) == pytest.approx(st.stuart_maxwell(FLIPS_3))
    assert st.stuart_maxwell(np.array([[7]])) == 1.0
    assert st.stuart_maxwell(np.zeros((3, 3))) == 1.0
    # Class 2 is only ever agreed on: a singular covariance, handled with the
    # pseudo-inverse and one degree of freedom less.
    singular = np.array([[50, 5, 0], [20, 40, 0], [0, 0, 30]])
    expected = SquareTable(singular[:2, :2], shift_zeros=False).homogeneity().pvalue
    assert st.stuart_maxwell(singular) == pytest.approx(expected, rel=1e-9)
    assert st.stuart_maxwell(np.diag([10, 20, 30])) == 1.0


def test_class_mix_shift_picks_the_test_by_class_count() -> None:
    two = np.array([[100, 30], [10, 100]])
    assert st.class_mix_shift_p(two) == st.mcnemar_exact(30, 10)
    two_in_three = np.array([[100, 0, 30], [0, 0, 0], [10, 0, 100]])
    assert st.class_mix_shift_p(two_in_three) == st.mcnemar_exact(30, 10)
    assert st.class_mix_shift_p(FLIPS_3) == st.stuart_maxwell(FLIPS_3)
    assert st.class_mix_shift_p(np.array([[5, 0], [0, 0]])) == 1.0


# --- paired deltas --------------------------------------------------------------------


@pytest.mark.parametrize(("pos", "neg"), [(0, 0), (10, 10), (3, 17), (60, 40), (0, 9)])
def test_sign_test_is_a_two_sided_binomial(pos: int, neg: int) -> None:
    expected = stats.binomtest(pos, pos + neg, 0.5).pvalue if pos + neg else 1.0
    assert st.sign_test(pos, neg) == pytest.approx(expected)
    # Hand value: 0 of 9 positive -> 2 * 0.5**9.
    assert st.sign_test(0, 9) == pytest.approx(2 * 0.5**9)


def _welford(x: np.ndarray) -> tuple[float, float, float]:
    return (float(len(x)), float(x.mean()), float(((x - x.mean()) ** 2).sum()))


def test_welford_merge_matches_numpy_on_the_concatenation() -> None:
    rng = np.random.default_rng(7)
    parts = [rng.normal(3.0, 2.0, size) for size in (1, 17, 400, 2_500)]
    state = (0.0, 0.0, 0.0)
    for part in parts:
        state = st.welford_merge(state, _welford(part))
    everything = np.concatenate(parts)
    n, mean, m2 = state
    assert n == len(everything)
    assert mean == pytest.approx(everything.mean(), rel=1e-12)
    assert m2 / n == pytest.approx(np.var(everything), rel=1e-10)
    assert st.welford_merge(_welford(parts[2]), (0.0, 0.0, 0.0)) == _welford(parts[2])


def test_mean_interval() -> None:
    x = np.array([0.1, -0.3, 0.25, 0.0, 0.4, -0.05, 0.2])
    low, high = st.mean_interval(*_welford(x))
    half = 1.959963984540054 * x.std(ddof=1) / math.sqrt(len(x))
    assert (low, high) == pytest.approx((x.mean() - half, x.mean() + half))
    assert all(math.isnan(v) for v in st.mean_interval(1, 0.5, 0.0))


# --- slices ---------------------------------------------------------------------------


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(30, 200, 90, 1800), (60, 400, 80, 1600)])
def test_two_proportion_z_matches_statsmodels(x1: int, n1: int, x2: int, n2: int) -> None:
    _, expected = proportions_ztest([x1, x2], [n1, n2])
    assert st.two_proportion_p(x1, n1, x2, n2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(4, 40, 10, 1000), (0, 35, 2, 2000)])
def test_two_proportion_small_counts_use_fisher(x1: int, n1: int, x2: int, n2: int) -> None:
    expected = stats.fisher_exact([[x1, n1 - x1], [x2, n2 - x2]]).pvalue
    assert st.two_proportion_p(x1, n1, x2, n2) == pytest.approx(expected, rel=1e-9)


def test_two_proportion_degenerate() -> None:
    assert st.two_proportion_p(0, 50, 0, 100) == 1.0
    assert st.two_proportion_p(50, 50, 100, 100) == 1.0
    assert st.two_proportion_p(5, 50, 0, 0) == 1.0
    with pytest.raises(ValueError, match="invalid counts"):
        st.two_proportion_p(60, 50, 0, 10)


def test_benjamini_hochberg_matches_statsmodels() -> None:
    p = np.array([0.001, 0.04, 0.03, 0.5, 0.012, 0.9, 0.049, 0.2, 0.0001, 0.04])
    expected = multipletests(p, method="fdr_bh")[1]
    assert st.benjamini_hochberg(p) == pytest.approx(expected, rel=1e-12)


def test_benjamini_hochberg_passes_nan_through() -> None:
    adjusted = st.benjamini_hochberg([0.01, float("nan"), 0.04, 0.03])
    assert math.isnan(adjusted[1])
    expected = multipletests([0.01, 0.04, 0.03], method="fdr_bh")[1]
    assert adjusted[[0, 2, 3]] == pytest.approx(expected)
    assert st.benjamini_hochberg([]).shape == (0,)
    assert st.benjamini_hochberg([0.9, 0.8]).max() <= 1.0


def test_phi_effect() -> None:
    assert st.phi_effect(0.15, 0.05, 0.07) == pytest.approx(0.10 / math.sqrt(0.07 * 0.93))
    assert st.phi_effect(0.0, 0.0, 0.0) == 0.0
    assert st.phi_effect(1.0, 1.0, 1.0) == 0.0


def _slice_rows() -> list[dict]:
    return [
        {"slice": "region", "value": "eu", "pairs": 400, "disagree": 60},
        {"slice": "region", "value": "us", "pairs": 1580, "disagree": 80},
        {"slice": "region", "value": "apac", "pairs": 20, "disagree": 10},
    ]


def test_slice_tests_flags_the_worse_slice_only() -> None:
    rows = st.slice_tests(_slice_rows(), total_pairs=2000, total_disagree=150)
    eu, us, apac = rows
    assert eu["slice"] == "region"
    assert eu["agreement"] == pytest.approx(0.85)
    assert eu["delta_vs_overall"] == pytest.approx(0.85 - 0.925)
    assert eu["p"] == pytest.approx(st.two_proportion_p(60, 400, 90, 1600))
    assert eu["p_adj"] == pytest.approx(multipletests([eu["p"], us["p"]], method="fdr_bh")[1][0])
    assert eu["phi"] == pytest.approx((0.15 - 90 / 1600) / math.sqrt(0.075 * 0.925))
    assert eu["risk_ratio"] == pytest.approx(0.15 / 0.075)
    assert (eu["ci_low"], eu["ci_high"]) == pytest.approx(st.wilson_interval(340, 400))
    assert eu["flagged"] is True
    # us is significantly different too, but better than its complement.
    assert us["p_adj"] < 0.05
    assert us["flagged"] is False
    # apac: below min_support, shown but never tested or flagged.
    assert apac["p"] is None
    assert apac["p_adj"] is None
    assert apac["flagged"] is False
    assert apac["agreement"] == pytest.approx(0.5)


def test_slice_tests_effect_size_gate_and_min_drop() -> None:
    # A large slice with a small, highly significant drop: phi < 0.2.
    rows = [{"slice": "s", "value": "v", "pairs": 20_000, "disagree": 2_400}]
    total_pairs, total_disagree = 100_000, 10_400
    (row,) = st.slice_tests(rows, total_pairs, total_disagree)
    assert row["p_adj"] < 1e-6
    assert row["phi"] < 0.2
    assert row["flagged"] is False
    (row,) = st.slice_tests(rows, total_pairs, total_disagree, min_drop=0.02)
    assert row["flagged"] is True
    (row,) = st.slice_tests(rows, total_pairs, total_disagree, min_drop=0.03)
    assert row["flagged"] is False


def test_sliceline_score_formula() -> None:
    size = np.array([100, 400, 0, 50])
    err = np.array([30, 40, 0, 1])
    scores = st.sliceline_score(size, err, total_n=1000, total_err=100, alpha=0.8)
    assert scores[0] == pytest.approx(0.8 * (0.3 / 0.1 - 1) - 0.2 * (1000 / 100 - 1))
    assert scores[1] == pytest.approx(0.8 * (0.1 / 0.1 - 1) - 0.2 * (1000 / 400 - 1))
    assert scores[2] == -np.inf
    assert np.all(st.sliceline_score(size, err, 1000, 0) == -np.inf)
    assert st.sliceline_score(size, err, 1000, 100)[0] == pytest.approx(0.95 * 2 - 0.05 * 9)


def test_sliceline_alpha_half_never_scores_above_zero() -> None:
    # Why the default is not SystemDS's 0.5: with 0/1 errors sc <= 0 for every slice.
    rng = np.random.default_rng(1)
    size = rng.integers(1, 1000, 500)
    err = rng.binomial(size, rng.uniform(0, 1, 500))
    scores = st.sliceline_score(size, err, total_n=1000, total_err=err.max() + 1, alpha=0.5)
    assert np.all(scores <= 0)


def _candidates() -> list[dict]:
    # 4,000 pairs, 200 disagreements overall (5%).
    return [
        {"conditions": [["device", "android"]], "pairs": 1200, "disagree": 150},
        {"conditions": [["country", "br"]], "pairs": 1000, "disagree": 110},
        {"conditions": [["device", "android"], ["country", "br"]], "pairs": 500, "disagree": 100},
        {"conditions": [["device", "ios"]], "pairs": 2800, "disagree": 50},
        # Positive score but not significant (6% vs 4.7%): must not be reported.
        {"conditions": [["plan", "pro"]], "pairs": 1000, "disagree": 60},
        # Too small: negative score, or below min_support.
        {"conditions": [["plan", "free"]], "pairs": 40, "disagree": 4},
        {"conditions": [["device", "android"], ["plan", "free"]], "pairs": 20, "disagree": 19},
        # Worse than its android parent.
        {"conditions": [["device", "android"], ["country", "de"]], "pairs": 600, "disagree": 45},
    ]


def test_discover_slices() -> None:
    candidates = _candidates()
    scores = st.sliceline_score(
        np.array([c["pairs"] for c in candidates]),
        np.array([c["disagree"] for c in candidates]),
        4000,
        200,
    )
    assert scores[7] > 0  # android & de is dropped by its parent, not by the score
    found = anytime_slices.discover(candidates, total_pairs=4000, total_disagree=200)
    confirmed = [f["conditions"] for f in found if f["status"] == anytime_slices.CONFIRMED]
    assert confirmed[:3] == [
        [["device", "android"], ["country", "br"]],
        [["device", "android"]],
        [["country", "br"]],
    ]
    assert [["device", "android"], ["country", "de"]] not in [f["conditions"] for f in found]
    top = found[0]
    assert top["pairs"] == 500
    assert top["agreement"] == pytest.approx(0.8)
    assert top["score"] == pytest.approx(scores[2])
    assert top["p_adj"] < 0.05
    assert len(anytime_slices.discover(candidates, 4000, 200, k=1)) == 1
    assert anytime_slices.discover([], 10, 1) == []


def test_discover_slices_drops_a_pair_no_better_than_its_parent() -> None:
    parent = {"conditions": [["device", "android"]], "pairs": 400, "disagree": 120}
    pair = {"conditions": [["device", "android"], ["country", "br"]], "pairs": 300, "disagree": 90}
    other = {"conditions": [["country", "br"]], "pairs": 1500, "disagree": 80}
    found = anytime_slices.discover([parent, pair, other], total_pairs=4000, total_disagree=200)
    assert [f["conditions"] for f in found] == [parent["conditions"]]
    # Without the parent among the candidates, the pair stands on its own.
    found = anytime_slices.discover([pair, other], total_pairs=4000, total_disagree=200)
    assert [f["conditions"] for f in found] == [pair["conditions"]]


# --- histograms -----------------------------------------------------------------------

EDGES_100 = np.linspace(0.0, 1.0, 101)


def _beta_hists() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    x = rng.beta(8, 2, 3_000)
    y = rng.beta(6, 2, 2_000)
    a = np.histogram(x, EDGES_100)[0]
    b = np.histogram(y, EDGES_100)[0]
    return x, y, a, b


def test_hist_mean_and_quantile_hand_values() -> None:
    counts = np.array([0, 2, 6, 2])
    edges = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    assert st.hist_mean(counts, edges) == pytest.approx((2 * 1.5 + 6 * 2.5 + 2 * 3.5) / 10)
    assert st.hist_quantile(counts, edges, 0.5) == pytest.approx(2.5)
    assert st.hist_quantile(counts, edges, 0.1) == pytest.approx(1.5)
    assert st.hist_quantile(counts, edges, 0.0) == pytest.approx(1.0)
    assert st.hist_quantile(counts, edges, 1.0) == pytest.approx(4.0)
    assert math.isnan(st.hist_quantile(np.zeros(4), edges, 0.5))
    assert math.isnan(st.hist_mean(np.zeros(4), edges))
    with pytest.raises(ValueError, match="quantile"):
        st.hist_quantile(counts, edges, 1.5)


def test_ks_distance_and_p_match_scipy_on_identically_binned_data() -> None:
    x, y, a, b = _beta_hists()
    # Replace each value by its bin index: the empirical CDFs then live on the bins.
    binned_x = np.digitize(x, EDGES_100[1:-1])
    binned_y = np.digitize(y, EDGES_100[1:-1])
    reference = stats.ks_2samp(binned_x, binned_y, method="asymp")
    assert st.ks_distance_hist(a, b) == pytest.approx(reference.statistic, abs=1e-12)
    assert st.ks_p_hist(a, b) == pytest.approx(reference.pvalue, rel=1e-6)
    assert st.ks_distance_hist(a, a) == 0.0
    assert st.ks_p_hist(a, a) == pytest.approx(1.0)
    assert math.isnan(st.ks_distance_hist(a, np.zeros_like(a)))
    with pytest.raises(ValueError, match="shape"):
        st.ks_distance_hist(a, b[:-1])


def test_wasserstein_matches_scipy_normalised_by_primary_spread() -> None:
    _, _, a, b = _beta_hists()
    mids = (EDGES_100[:-1] + EDGES_100[1:]) / 2
    w1 = stats.wasserstein_distance(mids, mids, a, b)
    std_a = math.sqrt(np.average((mids - np.average(mids, weights=a)) ** 2, weights=a))
    assert st.wasserstein_hist(a, b, EDGES_100) == pytest.approx(w1 / std_a, rel=1e-9)
    # A point mass has no spread: the 0.001 floor keeps the ratio finite.
    point = np.zeros(100)
    point[50] = 10
    shifted = np.zeros(100)
    shifted[52] = 10
    assert st.wasserstein_hist(point, shifted, EDGES_100) == pytest.approx(0.02 / 0.001)


def test_js_distance_matches_scipy() -> None:
    _, _, a, b = _beta_hists()
    expected = jensenshannon(a / a.sum(), b / b.sum(), base=2)
    assert st.js_distance_hist(a, b) == pytest.approx(expected, rel=1e-9)
    assert st.js_distance_hist(np.array([1, 0]), np.array([0, 3])) == pytest.approx(1.0)
    assert st.js_distance_hist(a, 2 * a) == pytest.approx(0.0, abs=1e-7)


def test_psi_hand_value() -> None:
    a = np.array([50, 30, 20, 0])
    b = np.array([40, 30, 20, 10])
    pa = np.array([0.5, 0.3, 0.2, 1e-4])
    pb = np.array([0.4, 0.3, 0.2, 0.1])
    assert st.psi_hist(a, b) == pytest.approx(float(np.sum((pb - pa) * np.log(pb / pa))))
    assert st.psi_hist(a, a) == 0.0
    assert math.isnan(st.psi_hist(a, np.zeros(4)))


def test_log_latency_edges_are_fixed_and_fine_enough() -> None:
    edges = st.log_latency_edges()
    assert np.array_equal(edges, st.log_latency_edges())
    assert edges[0] == pytest.approx(0.05)
    assert edges[-1] >= 120_000.0
    assert edges[-2] < 120_000.0
    assert np.allclose(edges[1:] / edges[:-1], 1.01)
    index = st.latency_bin_index(np.array([0.001, 0.05, 3.0, 1e9]), edges)
    assert index[0] == 0
    assert index[1] == 0
    assert edges[index[2]] <= 3.0 < edges[index[2] + 1]
    assert index[3] == len(edges) - 2
    with pytest.raises(ValueError, match="latency edges"):
        st.log_latency_edges(lo_ms=0.0)


def test_latency_quantiles_within_one_percent_on_lognormal() -> None:
    rng = np.random.default_rng(3)
    latencies = rng.lognormal(mean=math.log(40.0), sigma=0.9, size=50_000)
    edges = st.log_latency_edges()
    counts = np.bincount(st.latency_bin_index(latencies, edges), minlength=len(edges) - 1)
    got = st.latency_quantiles(counts, edges, qs=(0.5, 0.95, 0.99, 0.999))
    assert list(got) == ["p50", "p95", "p99", "p99.9"]
    for key, q in zip(got, (0.5, 0.95, 0.99, 0.999), strict=True):
        exact = np.quantile(latencies, q)
        assert got[key] == pytest.approx(exact, rel=0.01)
    empty = st.latency_quantiles(np.zeros(len(edges) - 1), edges)
    assert empty == {"p50": None, "p95": None, "p99": None}


# --- noise floor and labels -----------------------------------------------------------


def _independent_rows(hits: int, rows: int) -> RequestMoments:
    """Moments of `rows` one-row requests, `hits` of them disagreeing."""
    return RequestMoments(rows, rows, hits, rows, hits, hits)


def test_excess_disagreement_is_real() -> None:
    result = sequential.excess_cs(_independent_rows(300, 10_000), _independent_rows(100, 10_000))
    assert result["excess"] == pytest.approx(0.02)
    assert result["relative_excess"] == pytest.approx(0.02 / 0.04)
    assert result["real"] is True
    assert 0 < result["ci_low"] < 0.02 < result["ci_high"]


@pytest.mark.parametrize(
    ("d_raw", "d_noise", "why"),
    [
        (100, 110, "below the noise"),
        (110, 100, "relative excess under 20%"),
        (4, 1, "absolute excess under 0.03 points"),
    ],
)
def test_excess_disagreement_not_real(d_raw: int, d_noise: int, why: str) -> None:
    raw, noise = _independent_rows(d_raw, 100_000), _independent_rows(d_noise, 100_000)
    assert sequential.excess_cs(raw, noise)["real"] is False, why


def test_excess_disagreement_without_data() -> None:
    result = sequential.excess_cs(_independent_rows(5, 100), _independent_rows(0, 0))
    assert result["real"] is False
    assert (result["ci_low"], result["ci_high"]) == (-1.0, 1.0)
    assert math.isnan(result["excess"])


def test_accuracy_comparison_hand_values() -> None:
    a, b, c, d = 800, 40, 25, 135
    result = st.accuracy_comparison(a, b, c, d)
    n = 1000
    assert result["n"] == n
    assert result["primary_accuracy"] == pytest.approx(0.84)
    assert result["candidate_accuracy"] == pytest.approx(0.825)
    assert result["delta"] == pytest.approx(-0.015)
    se = math.sqrt(b + c - (b - c) ** 2 / n) / n
    assert result["delta_ci_low"] == pytest.approx(-0.015 - 1.959963984540054 * se)
    assert result["delta_ci_high"] == pytest.approx(-0.015 + 1.959963984540054 * se)
    assert result["negative_flip_rate"] == pytest.approx(0.04)
    expected_p = mcnemar([[a, b], [c, d]], exact=False, correction=True).pvalue
    assert result["mcnemar_p"] == pytest.approx(expected_p)
    empty = st.accuracy_comparison(0, 0, 0, 0)
    assert empty["n"] == 0
    assert math.isnan(empty["delta"])


def test_expected_calibration_error_matches_direct_computation() -> None:
    rng = np.random.default_rng(5)
    confidence = rng.uniform(0.3, 1.0, 4_000)
    correct = rng.uniform(size=4_000) < confidence**1.5  # overconfident model
    bins = np.minimum((confidence * st.ECE_BINS).astype(int), st.ECE_BINS - 1)
    counts = np.bincount(bins, minlength=st.ECE_BINS)
    correct_counts = np.bincount(bins, weights=correct, minlength=st.ECE_BINS)
    sums = np.bincount(bins, weights=confidence, minlength=st.ECE_BINS)
    expected = 0.0
    for k in range(st.ECE_BINS):
        in_bin = bins == k
        if in_bin.any():
            gap = abs(correct[in_bin].mean() - confidence[in_bin].mean())
            expected += in_bin.mean() * gap
    ece = st.expected_calibration_error(counts, correct_counts, sums)
    assert ece == pytest.approx(expected)
    assert ece > 0.05
    assert math.isnan(st.expected_calibration_error(np.zeros(15), np.zeros(15), np.zeros(15)))
