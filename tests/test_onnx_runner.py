"""OnnxCandidate: the proxy's in-process ONNX runner on a real onnxruntime session.

The queue / shed / timeout tests hold the worker threads with `GatedModel`, a wrapper
passed through the constructor that waits on an event before calling the real model, so
"every worker is busy" is a state the test controls instead of a race it hopes for.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import orjson
import pytest
from fixtures.onnx_models import TrialModel, build_models

from analysis.adapters import select_adapter
from common.errors import CandidateError, ModelLoadError
from common.settings import CandidateSettings, OutputSettings
from models.onnx_model import OnnxModel
from proxy.candidates import build_runner
from proxy.onnx_runner import OUTCOME_SHED, OnnxCandidate
from proxy.runner import CandidateRunner, MirrorRequest

OIP = select_adapter(OutputSettings(protocol="oip-v2"))


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrialModel]:
    return build_models(tmp_path_factory.mktemp("onnx"))


def settings(model: TrialModel, **kw: object) -> CandidateSettings:
    kw = {"run": "proxy", **kw}  # these tests drive the in-process runner
    return CandidateSettings(name="onnx-c", onnx=str(model.path), **kw)  # type: ignore[arg-type]


def request(rows: np.ndarray, request_id: str = "r") -> MirrorRequest:
    tensor = {"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel()}
    body = orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)
    return MirrorRequest(request_id, "POST", "/v2/models/m/infer", "", [], body)


def probs(body: bytes) -> np.ndarray:
    return np.array([r.probs for r in OIP.parse(b"", body).rows])


class GatedModel:
    """The real model behind a gate; records the size of every batch it is given."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def predict_bodies(self, bodies: Sequence[bytes]) -> list[bytes | CandidateError]:
        self.batches.append(len(bodies))
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise RuntimeError("gate never opened")
        return self.model.predict_bodies(bodies)


async def wait_until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


async def test_run_matches_sklearn_and_is_a_candidate_runner(
    models: dict[str, TrialModel],
) -> None:
    model = models["cancer_nozipmap"]
    cand = OnnxCandidate(settings(model))
    try:
        assert isinstance(cand, CandidateRunner)
        result = await cand.run(request(model.X[10:14]))
        assert (result.outcome, result.status) == ("ok", 200)
        assert result.content_type == "application/json"
        assert result.elapsed_ms > 0 and result.error == ""
        expected = model.estimator.predict_proba(model.X[10:14])
        np.testing.assert_allclose(probs(result.body), expected, atol=1e-5)
    finally:
        await cand.close()


async def test_concurrent_requests_are_batched_and_answered_in_place(
    models: dict[str, TrialModel],
) -> None:
    model = models["iris_zipmap"]
    cand = OnnxCandidate(settings(model, threads=2, queue=256))
    try:
        results = await asyncio.gather(*(cand.run(request(model.X[i : i + 1])) for i in range(150)))
        assert all(r.outcome == "ok" for r in results)
        got = np.vstack([probs(r.body) for r in results])
        np.testing.assert_allclose(got, model.estimator.predict_proba(model.X[:150]), atol=1e-5)
    finally:
        await cand.close()


async def test_full_queue_sheds_and_waiting_requests_run_as_one_batch(
    models: dict[str, TrialModel],
) -> None:
    model = models["iris_nozipmap"]
    gated = GatedModel(OnnxModel.load(settings(model)))
    cand = OnnxCandidate(settings(model, threads=1, queue=2, timeout_ms=20_000), model=gated)  # type: ignore[arg-type]
    try:
        first = asyncio.create_task(cand.run(request(model.X[0:1])))
        await asyncio.to_thread(gated.entered.wait, 5)
        queued = [asyncio.create_task(cand.run(request(model.X[i : i + 1]))) for i in (1, 2)]
        await wait_until(lambda: cand.queued == 2)
        shed = await cand.run(request(model.X[3:4]))
        assert shed.outcome == OUTCOME_SHED == "shed"
        assert "queue full" in shed.error
        gated.gate.set()
        results = [await first, *[await t for t in queued]]
        assert [r.outcome for r in results] == ["ok"] * 3
        assert gated.batches == [1, 2]  # the two waiting requests shared one session.run
        np.testing.assert_allclose(
            probs(results[2].body), model.estimator.predict_proba(model.X[2:3]), atol=1e-5
        )
    finally:
        gated.gate.set()
        await cand.close()


async def test_timeout_then_recovery(models: dict[str, TrialModel]) -> None:
    model = models["iris_nozipmap"]
    gated = GatedModel(OnnxModel.load(settings(model)))
    cand = OnnxCandidate(settings(model, threads=1, timeout_ms=50), model=gated)  # type: ignore[arg-type]
    try:
        slow = await cand.run(request(model.X[:1]))
        assert slow.outcome == "timeout"
        # asyncio may fire a timer up to its clock resolution early
        assert slow.elapsed_ms >= 45 and "50 ms" in slow.error
        waiting = await cand.run(request(model.X[:1]))  # queued behind the stuck batch
        assert waiting.outcome == "timeout"
        gated.gate.set()
        await wait_until(lambda: cand.queued == 0)
        fine = await cand.run(request(model.X[5:6]))
        assert fine.outcome == "ok"
        assert gated.batches == [1, 1]  # the timed-out waiter was skipped, never run
    finally:
        gated.gate.set()
        await cand.close()


async def test_bad_input_is_an_error_and_others_succeed(models: dict[str, TrialModel]) -> None:
    model = models["iris_zipmap"]
    cand = OnnxCandidate(settings(model, threads=1))
    bad = MirrorRequest("bad", "POST", "/", "", [], b'{"inputs": [{"name": "x"}]}')
    try:
        results = await asyncio.gather(
            cand.run(request(model.X[:2])),
            cand.run(bad),
            cand.run(request(model.X[:2, :3])),
            cand.run(request(model.X[2:3])),
        )
        assert [r.outcome for r in results] == ["ok", "error", "error", "ok"]
        assert results[2].body == b"" and "expects shape" in results[2].error
    finally:
        await cand.close()


async def test_close_fails_waiting_requests_and_later_runs(models: dict[str, TrialModel]) -> None:
    model = models["iris_nozipmap"]
    gated = GatedModel(OnnxModel.load(settings(model)))
    cand = OnnxCandidate(settings(model, threads=1, timeout_ms=20_000), model=gated)  # type: ignore[arg-type]
    running = asyncio.create_task(cand.run(request(model.X[:1])))
    await asyncio.to_thread(gated.entered.wait, 5)
    waiting = asyncio.create_task(cand.run(request(model.X[1:2])))
    await wait_until(lambda: cand.queued == 1)
    await cand.close()
    assert (await waiting).outcome == "error"
    assert (await cand.run(request(model.X[:1]))).error == "candidate closed"
    gated.gate.set()
    assert (await running).outcome == "ok"  # the batch already running still completes


def test_load_errors_surface_at_construction(models: dict[str, TrialModel]) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        OnnxCandidate(CandidateSettings(name="x", onnx="/nonexistent/model.onnx"))
    cand = build_runner(settings(models["iris_zipmap"]), max_body=1 << 20, pool_size=8)
    assert isinstance(cand, OnnxCandidate) and cand.name == "onnx-c"
