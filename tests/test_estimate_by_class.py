"""Estimated accuracy per predicted class (with intervals) and the interval on a slice's
estimated_delta, through the worker: a candidate worse only on one class and one slice."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from analysis import estimate
from analysis.report import build_report
from analysis.worker import Worker
from common.keys import Keys
from tests import pairs_factory as pf

NOW = pf.TS0 / 1000 + 30


def _probs(label: int, conf: float) -> list[float]:
    rest = (1.0 - conf) / 2
    return [conf if i == label else rest for i in range(3)]


def _report(client: redis.Redis, prefix: str) -> dict:
    return build_report(client, Keys(prefix), pf.settings(prefix), "v2", 3600, now=NOW)


def test_per_class_estimates_and_slice_delta_intervals(
    redis_client: redis.Redis, prefix: str
) -> None:
    rng = np.random.default_rng(5)
    records = []
    for i in range(300):  # class 0 (setosa): the candidate is less sure on DE rows only
        de = i % 3 == 0
        conf_c = 0.6 + rng.uniform(-0.05, 0.05) if de else 0.9
        records.append(pf.record(f"a{i}", [_probs(0, 0.9)], [_probs(0, conf_c)],
                                 country="DE" if de else "FR"))  # fmt: skip
    for i in range(100):  # class 2 (virginica): both 0.7
        records.append(pf.record(f"b{i}", [_probs(2, 0.7)], [_probs(2, 0.7)], country="FR"))
    pf.write(redis_client, Keys(prefix).pairs("v2"), records)
    pf.drain(Worker(redis_client, pf.settings(prefix)))
    est = _report(redis_client, prefix)["estimated"]
    classes = {r["class"]: r for r in est["by_class"]}
    assert list(classes) == ["setosa", "virginica"]  # most rows first
    setosa, virginica = classes["setosa"], classes["virginica"]
    assert setosa["primary"]["rows"] == 300 and setosa["primary"]["accuracy"] == pytest.approx(0.9)
    assert setosa["candidate"]["accuracy"] == pytest.approx(0.8, abs=0.01)
    assert virginica["candidate"]["accuracy"] == pytest.approx(0.7)
    for side in ("primary", "candidate"):
        e = virginica[side]  # sum c(1-c) = 100 * 0.21: half width 1.96 * sqrt(21) / 100
        assert e["ci_high"] - e["accuracy"] == pytest.approx(1.96 * 21**0.5 / 100, abs=1e-3)
        assert e["ci_low"] < e["accuracy"] < e["ci_high"]

    from rich.console import Console

    from shadowtrial.render import render_report

    console = Console(record=True, width=200)
    render_report(_report(redis_client, prefix), console)
    text = console.export_text()
    assert "predicted setosa: expected accuracy, primary / candidate" in text
    assert "predicted virginica" in text

    rows = {(r["slice"], r["value"]): r for r in _report(redis_client, prefix)["slices"]}
    de, fr = rows[("country", "DE")], rows[("country", "FR")]
    assert de["estimated_delta"] == pytest.approx(-0.3, abs=0.01)
    assert de["estimated_delta_ci_low"] < de["estimated_delta"] < de["estimated_delta_ci_high"]
    assert de["estimated_delta_ci_high"] - de["estimated_delta_ci_low"] < 0.02  # 100 rows, sd 0.03
    assert fr["estimated_delta"] == pytest.approx(0.0, abs=1e-6)
    assert fr["estimated_delta_ci_low"] == pytest.approx(0.0, abs=1e-6)  # no spread: no width


def test_slice_interval_covers_the_mean_in_most_runs() -> None:
    """The interval of a slice's mean delta covers the population mean in >= 90% of runs."""
    rng = np.random.default_rng(11)
    covered = 0
    for _ in range(300):
        d = rng.normal(-0.02, 0.1, 80)
        low, high = estimate._mean_interval(80, float(d.mean()), float((d * d).sum() * 1e6))
        covered += low <= -0.02 <= high
    assert 0.9 <= covered / 300 <= 0.99


def test_no_interval_without_squares_or_rows() -> None:
    assert estimate._mean_interval(40, None, 5.0) == (None, None)
    assert estimate._mean_interval(40, 0.2, None) == (None, None)
    assert estimate._mean_interval(40, 0.2, 0.0) == (None, None)  # squares missing, mean not 0
