"""Seeded calibration of the whole gate, through the same code the worker and report run.

Small versions of benchmarks/evidence_bench.py (the full-size numbers are in
benchmarks/RESULTS.md): pair evidence counted by the worker's BatchDelta, read by
analysis.report.analyse and judged by analysis.gate.evaluate_gate at every look.
"""

from __future__ import annotations

from benchmarks.evidence_bench import Scenario, run_many

OWN_RULES = {"agreement", "slices", "errors", "labels"}


def test_an_aa_twin_raises_no_alarm_when_read_at_every_look() -> None:
    """8-row requests with correlation 0.2: the old gate alarmed in about a quarter of runs."""
    sc = Scenario("aa", pairs=1_500, rows=8, look_every=100)
    results = run_many(sc, runs=16, seed0=101)
    alarms = [r for r in results if set(r.first_fail) & OWN_RULES]
    assert len(alarms) <= 1, [r.first_fail for r in alarms]
    assert all(r.confirmed_discovery is None for r in results)
    for name in results[0].covered:
        assert sum(r.covered[name] for r in results) >= 15, name


def test_a_ten_point_drop_on_a_tenth_of_the_traffic_is_failed() -> None:
    sc = Scenario("power", pairs=1_500, rows=8, drop=0.10, noise_rate=None, labelled=0.0)
    results = run_many(sc, runs=6, seed0=202)
    assert all("slices" in r.first_fail for r in results), [r.first_fail for r in results]
