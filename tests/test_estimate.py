"""Accuracy estimated before labels (CBPE), checked against labels as they arrive.

A seeded simulation of the pure estimate (calibrated models: the realised accuracy is in
the estimate's interval in >= 90% of runs), and end to end through the worker and
late labels: a calibrated primary and an overconfident candidate, the report says which
one cannot be trusted."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from analysis import estimate
from analysis.feedback import record_feedback
from analysis.report import build_report
from analysis.summaries import CONF_BINS, CONF_EDGES
from analysis.worker import Worker
from common.keys import Keys
from tests import pairs_factory as pf

NOW = pf.TS0 / 1000 + 30
CLASSES = ("setosa", "versicolor", "virginica")


def _calibrated_run(rng: np.random.Generator, n: int) -> tuple[float, dict]:
    """n rows whose confidence c is the probability of being right: (realised, estimate)."""
    conf = rng.uniform(0.4, 1.0, n)
    right = rng.random(n) < conf
    hist = np.histogram(conf, bins=CONF_EDGES)[0]
    return float(right.mean()), estimate.expected_accuracy(n, float(conf.sum()), hist)


def test_calibrated_estimate_covers_the_realised_accuracy() -> None:
    rng = np.random.default_rng(17)
    runs = [_calibrated_run(rng, 400) for _ in range(300)]
    covered = sum(e["ci_low"] <= r <= e["ci_high"] for r, e in runs)
    assert covered / len(runs) >= 0.90
    assert covered / len(runs) <= 0.99  # the interval is not vacuous either


def test_no_rows_no_estimate() -> None:
    empty = estimate.expected_accuracy(0, 0.0, np.zeros(CONF_BINS))
    assert empty["accuracy"] is None and empty["rows"] == 0


def _probs(label: int, conf: float) -> list[float]:
    rest = (1.0 - conf) / 2
    return [conf if i == label else rest for i in range(3)]


def _trial(rng: np.random.Generator, n: int) -> tuple[list, dict[str, str]]:
    """Pairs and their truths: the primary is calibrated (0.8 confident, right 80%); the
    candidate says 0.95 on the same rows but is right only when the primary is (80%)."""
    records, truth = [], {}
    for i in range(n):
        right = rng.random() < 0.8
        guess = int(rng.integers(3))
        true = guess if right else (guess + 1) % 3
        rid = f"r{i}"
        records.append(pf.record(rid, [_probs(guess, 0.8)], [_probs(guess, 0.95)]))
        truth[rid] = CLASSES[true]
    return records, truth


def _report(client: redis.Redis, prefix: str) -> dict:
    return build_report(client, Keys(prefix), pf.settings(prefix), "v2", 3600, now=NOW)


def test_report_estimates_before_labels_and_names_a_miscalibrated_candidate(
    redis_client: redis.Redis, prefix: str
) -> None:
    records, truth = _trial(np.random.default_rng(3), 200)
    pf.write(redis_client, Keys(prefix).pairs("v2"), records)
    pf.drain(Worker(redis_client, pf.settings(prefix)))
    before = _report(redis_client, prefix)["estimated"]
    assert before["primary"]["accuracy"] == pytest.approx(0.8)
    assert before["candidate"]["accuracy"] == pytest.approx(0.95)
    assert before["delta"] == pytest.approx(0.15)
    assert before["trusted"] is False and "unchecked" in before["reason"]
    rows = {(r["slice"], r["value"]): r for r in _report(redis_client, prefix)["slices"]}
    assert rows[("country", "FR")]["estimated_delta"] == pytest.approx(0.15)
    for rid, label in truth.items():
        record_feedback(redis_client, Keys(prefix), rid, label)
    after = _report(redis_client, prefix)["estimated"]
    cal = after["calibration"]
    assert cal["labelled"] == 200
    assert cal["primary"]["within"] is True
    assert cal["candidate"]["within"] is False
    assert cal["candidate_ece"] > 0.1 > cal["primary_ece"]
    assert after["trusted"] is False and "miscalibrated" in after["reason"]
    assert "candidate estimated" in after["reason"] and "primary" not in after["reason"]
    assert after["representative"]["representative"] is True  # every request was labelled


def test_skewed_labels_are_reported_as_unrepresentative(
    redis_client: redis.Redis, prefix: str
) -> None:
    """Labels only for the requests where the models disagree: not like the rest."""
    agree = [pf.record(f"a{i}", [_probs(0, 0.9)], [_probs(0, 0.9)]) for i in range(150)]
    differ = [pf.record(f"d{i}", [_probs(0, 0.9)], [_probs(1, 0.9)]) for i in range(50)]
    pf.write(redis_client, Keys(prefix).pairs("v2"), agree + differ)
    pf.drain(Worker(redis_client, pf.settings(prefix)))
    for i in range(50):
        record_feedback(redis_client, Keys(prefix), f"d{i}", "setosa")
    rep = _report(redis_client, prefix)["estimated"]["representative"]
    assert rep["labelled_agreement"] == 0.0 and rep["agreement"] == pytest.approx(0.75)
    assert rep["representative"] is False


def test_the_terminal_shows_the_estimate_and_why_it_is_not_trusted(
    redis_client: redis.Redis, prefix: str
) -> None:
    from rich.console import Console

    from shadowtrial.render import render_report

    records, truth = _trial(np.random.default_rng(4), 60)
    pf.write(redis_client, Keys(prefix).pairs("v2"), records)
    pf.drain(Worker(redis_client, pf.settings(prefix)))
    for rid, label in truth.items():
        record_feedback(redis_client, Keys(prefix), rid, label)
    console = Console(record=True, width=160)
    render_report(_report(redis_client, prefix), console)
    text = console.export_text()
    assert "Estimated accuracy, before labels (not trusted: miscalibrated" in text
    assert "expected accuracy, candidate" in text and "95.0%" in text


def test_a_small_slice_gets_no_estimated_delta(redis_client: redis.Redis, prefix: str) -> None:
    records = [pf.record(f"r{i}", [_probs(0, 0.8)], [_probs(0, 0.9)], country="DE")
               for i in range(estimate.MIN_SLICE_ROWS - 1)]  # fmt: skip
    pf.write(redis_client, Keys(prefix).pairs("v2"), records)
    pf.drain(Worker(redis_client, pf.settings(prefix)))
    rows = {(r["slice"], r["value"]): r for r in _report(redis_client, prefix)["slices"]}
    assert rows[("country", "DE")]["estimated_delta"] is None
