"""Recall per true class from late labels, and the gate rule that reads it: overall
accuracy barely moves while one class loses its recall."""

from __future__ import annotations

import dataclasses

import pytest
import redis

from analysis.feedback import record_feedback
from analysis.gate import evaluate_gate
from analysis.report import build_report
from analysis.worker import Worker
from common.keys import Keys
from tests import pairs_factory as pf

SETOSA = [0.9, 0.06, 0.04]
VERSICOLOR = [0.1, 0.8, 0.1]
VIRGINICA = [0.1, 0.1, 0.8]


def _trial(client: redis.Redis, prefix: str) -> dict:
    """200 setosa rows both get right; 40 virginica rows the candidate calls versicolor."""
    records = [pf.record(f"s{i}", [SETOSA], [SETOSA]) for i in range(200)]
    records += [pf.record(f"v{i}", [VIRGINICA], [VERSICOLOR]) for i in range(40)]
    pf.write(client, Keys(prefix).pairs("v2"), records)
    pf.drain(Worker(client, pf.settings(prefix)))
    for i in range(200):
        record_feedback(client, Keys(prefix), f"s{i}", "setosa")
    for i in range(40):
        record_feedback(client, Keys(prefix), f"v{i}", "virginica")
    return build_report(client, Keys(prefix), pf.settings(prefix), "v2", 3600,
                        now=pf.TS0 / 1000 + 30)  # fmt: skip


def test_a_class_losing_its_recall_is_shown_and_fails_the_rule(
    redis_client: redis.Redis, prefix: str
) -> None:
    report = _trial(redis_client, prefix)
    by_class = {r["class"]: r for r in report["labels"]["by_class"]}
    assert by_class["virginica"]["n"] == 40
    assert by_class["virginica"]["primary_recall"] == 1.0
    assert by_class["virginica"]["candidate_recall"] == 0.0
    assert by_class["virginica"]["ci_high"] < -0.5
    assert by_class["setosa"]["delta"] == 0.0
    assert by_class["setosa"]["ci_low"] > -0.05

    settings = pf.settings(prefix)
    off = evaluate_gate(report, settings.gate)
    assert all(r["rule"] != "recall" for r in off["rules"])  # off by default
    on = evaluate_gate(report, dataclasses.replace(settings.gate, max_recall_drop=0.05))
    rule = next(r for r in on["rules"] if r["rule"] == "recall")
    assert rule["outcome"] == "fail" and "virginica" in rule["detail"]
    assert on["verdict"] == "fail" and "recall" in on["end_only_rules"]


def test_recall_rule_skips_without_labels() -> None:
    from common.settings import GateSettings

    gate = GateSettings(max_recall_drop=0.05)
    result = evaluate_gate({"pairs": 0, "labels": {"n": 0, "by_class": []}}, gate)
    rule = next(r for r in result["rules"] if r["rule"] == "recall")
    assert rule["outcome"] == "skip"


@pytest.mark.parametrize("n_classes", [60])
def test_class_fields_stay_bounded(redis_client: redis.Redis, prefix: str, n_classes: int) -> None:
    """Labels naming many classes: at most 50 per bucket, the rest under `other`."""
    records = [pf.record(f"r{i}", [SETOSA], [SETOSA]) for i in range(n_classes)]
    pf.write(redis_client, Keys(prefix).pairs("v2"), records)
    pf.drain(Worker(redis_client, pf.settings(prefix)))
    for i in range(n_classes):
        record_feedback(redis_client, Keys(prefix), f"r{i}", f"class-{i}")
    report = build_report(redis_client, Keys(prefix), pf.settings(prefix), "v2", 3600,
                          now=pf.TS0 / 1000 + 30)  # fmt: skip
    classes = {r["class"]: r["n"] for r in report["labels"]["by_class"]}
    assert len(classes) == 51 and classes["other"] == n_classes - 50


def _confidence_report(mean: float, low: float, high: float, nb_c: float, p: float) -> dict:
    return {"pairs": 5000, "confidence_deltas": {"n": 5000, "mean": mean, "ci_low": low,
                                                 "ci_high": high},
            "confidence": {"near_boundary": {"n": 5000, "primary": 0.05, "candidate": nb_c,
                                             "p": p}}}  # fmt: skip


@pytest.mark.parametrize(
    ("report", "outcome"),
    [(_confidence_report(-0.10, -0.12, -0.08, 0.05, 1.0), "fail"),   # surely less confident
     (_confidence_report(-0.01, -0.02, 0.00, 0.05, 1.0), "pass"),
     (_confidence_report(-0.04, -0.09, 0.01, 0.05, 1.0), "insufficient"),
     (_confidence_report(0.0, -0.01, 0.01, 0.15, 0.001), "fail")],   # near the boundary
)  # fmt: skip
def test_the_optional_confidence_rule(report: dict, outcome: str) -> None:
    from common.settings import GateSettings

    gate = GateSettings(max_confidence_drop=0.05, max_near_boundary_increase=0.05)
    rule = next(r for r in evaluate_gate(report, gate)["rules"] if r["rule"] == "confidence")
    assert rule["outcome"] == outcome
    assert all(r["rule"] != "confidence" for r in evaluate_gate(report, GateSettings())["rules"])


def _score_answer(value: float) -> bytes:
    import orjson

    return orjson.dumps({"model_name": "m", "outputs": [
        {"name": "predict", "shape": [1, 1], "datatype": "FP64", "data": [value]}]})  # fmt: skip


def test_numeric_ground_truth_gives_each_sides_error_and_its_change(
    redis_client: redis.Redis, prefix: str
) -> None:
    """Regression rows: the primary is off by 1, the candidate by 3; one row's truth arrives
    before its pair (it waits as a label)."""
    records = []
    for i in range(40):
        rec = pf.record(f"g{i}", [SETOSA], [SETOSA])
        records.append(dataclasses.replace(rec, primary_body=_score_answer(10.0 + i + 1),
                                           candidate_body=_score_answer(10.0 + i - 3)))  # fmt: skip
    keys = Keys(prefix)
    worker = Worker(redis_client, pf.settings(prefix))
    worker.discover()
    assert record_feedback(redis_client, keys, "g0", None, value=10.0) == {"v2": "pending"}
    pf.write(redis_client, keys.pairs("v2"), records)
    pf.drain(worker)
    for i in range(1, 40):
        joined = record_feedback(redis_client, keys, f"g{i}", None, value=10.0 + i)
        assert joined == {"v2": "joined"}
    with pytest.raises(ValueError, match="finite"):
        record_feedback(redis_client, keys, "g1", None, value=float("nan"))
    report = build_report(redis_client, keys, pf.settings(prefix), "v2", 3600,
                          now=pf.TS0 / 1000 + 30)  # fmt: skip
    numeric = report["labels"]["numeric"]
    assert numeric["n"] == 40 and numeric["candidate_failed"] == 0
    assert numeric["primary_mae"] == pytest.approx(1.0)
    assert numeric["candidate_mae"] == pytest.approx(3.0)
    assert numeric["mae_change"] == pytest.approx(2.0)
    assert numeric["ci_low"] == pytest.approx(2.0) == numeric["ci_high"]
    assert report["labels"]["n"] == 0  # no class labels were counted
