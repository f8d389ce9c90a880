"""Seeded simulations: the confidence sequence and the slice tests keep their promises.

Streams are generated with numpy in one go per scenario; the statistics are then read
through the same public functions the report uses.
"""

from __future__ import annotations

import numpy as np

from analysis import stats as st

PAIRS = 2_000
# Slice features as (name, value shares). "plan" has a value too rare to be tested
# (about 16 pairs against min_support 32) so display-only rows are exercised too.
FEATURES = [
    ("region", [0.2, 0.35, 0.25, 0.12, 0.08]),
    ("device", [0.55, 0.45]),
    ("plan", [0.6, 0.25, 0.142, 0.008]),
    ("hour", [1 / 6] * 6),
    ("conf_decile", [0.05, 0.05, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.15, 0.15]),
]


def _counts_per_value(values: np.ndarray, weights: np.ndarray, n_values: int) -> np.ndarray:
    """Per run and value, the sum of weights: one bincount for all runs at once."""
    runs = values.shape[0]
    index = values + n_values * np.arange(runs)[:, None]
    flat = np.bincount(index.ravel(), weights=weights.ravel(), minlength=runs * n_values)
    return flat.reshape(runs, n_values).astype(np.int64)


def _simulate_slices(
    rng: np.random.Generator, runs: int, base_rate: float, planted_rate: float | None = None
) -> tuple[list[list[dict]], np.ndarray]:
    """Slice rows per run; with ``planted_rate``, region value 0 disagrees at that rate."""
    values = {
        name: rng.choice(len(shares), size=(runs, PAIRS), p=shares) for name, shares in FEATURES
    }
    rate = np.full((runs, PAIRS), base_rate)
    if planted_rate is not None:
        rate[values["region"] == 0] = planted_rate
    disagree = rng.random((runs, PAIRS)) < rate
    ones = np.ones((runs, PAIRS))
    per_feature = {
        name: (
            _counts_per_value(values[name], ones, len(shares)),
            _counts_per_value(values[name], disagree, len(shares)),
        )
        for name, shares in FEATURES
    }
    rows = [
        [
            {"slice": name, "value": v, "pairs": int(pairs[r, v]), "disagree": int(dis[r, v])}
            for name, (pairs, dis) in per_feature.items()
            for v in range(pairs.shape[1])
        ]
        for r in range(runs)
    ]
    return rows, disagree.sum(axis=1)


def _run_slice_tests(rows: list[list[dict]], total_disagree: np.ndarray) -> list[list[dict]]:
    return [
        st.slice_tests(run_rows, PAIRS, int(total))
        for run_rows, total in zip(rows, total_disagree, strict=True)
    ]


def test_confidence_sequence_covers_the_truth_at_every_look() -> None:
    rng = np.random.default_rng(20210901)
    runs, horizon, step = 500, 10_000, 100
    looks = np.arange(step, horizon + 1, step)
    for true_rate in (0.5, 0.05):
        successes = np.cumsum(rng.random((runs, horizon)) < true_rate, axis=1)[:, looks - 1]
        cs_always = np.ones(runs, dtype=bool)
        wilson_always = np.ones(runs, dtype=bool)
        for j, t in enumerate(looks):
            for r in range(runs):
                low, high = st.confidence_sequence(int(successes[r, j]), int(t))
                cs_always[r] &= low <= true_rate <= high
                w_low, w_high = st.wilson_interval(int(successes[r, j]), int(t))
                wilson_always[r] &= w_low <= true_rate <= w_high
        assert cs_always.mean() >= 0.95, (true_rate, cs_always.mean())
        if true_rate == 0.5:
            # The naive alternative: a fixed-n interval re-read at 100 looks is not
            # anytime-valid. This is what the confidence sequence pays its width for.
            assert wilson_always.mean() < 0.90, wilson_always.mean()
            low, high = st.confidence_sequence(int(successes[0, -1]), horizon)
            assert high - low < 0.032


def test_aa_slices_are_rarely_flagged() -> None:
    rng = np.random.default_rng(7)
    runs = 200
    rows, total_disagree = _simulate_slices(rng, runs, base_rate=0.1)
    results = _run_slice_tests(rows, total_disagree)
    flagged_runs = sum(any(r["flagged"] for r in run) for run in results)
    assert flagged_runs <= 0.05 * runs, flagged_runs
    # The rare plan value is displayed but never tested.
    rare = [r for run in results for r in run if r["pairs"] < 32]
    assert rare
    assert all(r["p"] is None and r["flagged"] is False for r in rare)
    # Without BH and the effect-size gate, chance alone would flag most runs:
    # the guard above is what keeps A/A quiet.
    naive_runs = sum(any(r["p"] is not None and r["p"] < 0.05 for r in run) for run in results)
    assert naive_runs > 0.3 * runs, naive_runs


def test_a_planted_ten_point_drop_is_found() -> None:
    rng = np.random.default_rng(11)
    runs = 200
    rows, total_disagree = _simulate_slices(rng, runs, base_rate=0.05, planted_rate=0.15)
    results = _run_slice_tests(rows, total_disagree)
    planted = [next(r for r in run if (r["slice"], r["value"]) == ("region", 0)) for run in results]
    assert sum(r["flagged"] for r in planted) >= 0.9 * runs
    assert 0.18 * PAIRS < np.mean([r["pairs"] for r in planted]) < 0.22 * PAIRS
    # BH promises a false discovery rate, E[false flags / max(flags, 1)], at most q.
    false_discovery_proportions = [
        sum(r["flagged"] for r in run if (r["slice"], r["value"]) != ("region", 0))
        / max(1, sum(r["flagged"] for r in run))
        for run in results
    ]
    assert np.mean(false_discovery_proportions) <= 0.05
