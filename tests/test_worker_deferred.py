"""`run = "worker"` candidates: the worker runs the ONNX model on the batch's requests and
compares its answers like any other candidate's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
import redis
from fixtures.onnx_models import TrialModel, build_models

from analysis.report import build_report
from analysis.worker import Worker
from common.keys import Keys
from common.records import OUTCOME_DEFERRED, PairRecord
from common.settings import settings_from_mapping
from tests import pairs_factory as pf


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> TrialModel:
    return build_models(tmp_path_factory.mktemp("onnx"))["iris_nozipmap"]


def _request(row: np.ndarray) -> bytes:
    tensor = {"name": "input-0", "shape": [1, len(row)], "datatype": "FP32", "data": row.tolist()}
    return orjson.dumps({"inputs": [tensor]})


def _deferred(i: int, request: bytes, primary_probs: list[float]) -> PairRecord:
    return PairRecord(
        request_id=f"r{i}",
        candidate="onnx",
        ts_ms=pf.TS0 + i,
        request_body=request,
        primary_status=200,
        primary_ms=5.0,
        primary_body=pf.oip_answer([primary_probs], classes=("0", "1", "2")),
        candidate_outcome=OUTCOME_DEFERRED,
    )


def test_the_worker_runs_deferred_candidates(
    redis_client: redis.Redis, prefix: str, iris: TrialModel, tmp_path: Path
) -> None:
    rows = iris.X[:60]
    probs = iris.estimator.predict_proba(rows)
    records = [
        _deferred(i, _request(row), p.tolist())
        for i, (row, p) in enumerate(zip(rows, probs, strict=True))
    ]
    records.append(_deferred(60, _request(np.array([1.0, 2.0])), probs[0].tolist()))  # too narrow
    raw = {
        "redis": {"prefix": prefix},
        "candidates": [{"name": "onnx", "onnx": str(iris.path), "run": "worker"}],
    }
    settings = settings_from_mapping(raw, environ={})
    keys = Keys(prefix)
    pf.write(redis_client, keys.pairs("onnx"), records)
    assert pf.drain(Worker(redis_client, settings)) == 61
    report = build_report(redis_client, keys, settings, "onnx", 3600, now=pf.TS0 / 1000 + 30)
    assert report["records"]["deferred"] == 61
    assert report["agreement"]["n"] == 61
    assert report["agreement"]["disagree"] == 1  # the bad request: ERR, sklearn and ONNX agree
    assert report["errors"]["by_kind"] == {"error": 1}
    assert report["confidence_deltas"]["n"] == 60
    assert abs(report["confidence_deltas"]["mean"]) < 1e-5
    assert report["latency"]["comparable"] is False
    assert next(r for r in report["gate"]["rules"] if r["rule"] == "latency")["outcome"] == "skip"


def test_a_missing_model_makes_every_deferred_pair_an_error(
    redis_client: redis.Redis, prefix: str
) -> None:
    raw = {
        "redis": {"prefix": prefix},
        "candidates": [{"name": "onnx", "onnx": "/nonexistent/model.onnx", "run": "worker"}],
    }
    settings = settings_from_mapping(raw, environ={})
    keys = Keys(prefix)
    pf.write(
        redis_client, keys.pairs("onnx"), [_deferred(i, b"{}", [0.8, 0.1, 0.1]) for i in range(3)]
    )
    assert pf.drain(Worker(redis_client, settings)) == 3
    report = build_report(redis_client, keys, settings, "onnx", 3600, now=pf.TS0 / 1000 + 30)
    assert report["errors"]["by_kind"] == {"model_load": 3}
    assert report["flips"]["labels"] == ["0", "ERR"]
