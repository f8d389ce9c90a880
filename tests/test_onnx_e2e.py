"""End to end: a real OIP v2 primary serving a scikit-learn model (MLServer's answer shape),
the real proxy mirroring to the same model converted to ONNX (`run = "proxy"`), real Redis;
the recorded pairs parse into canonical predictions that agree row by row, with slices."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import redis
from fixtures.onnx_models import TrialModel, build_models
from proxy_upstreams import proxy_settings, running_proxy, wait_until
from servers import serve_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from analysis.adapters import select_adapter
from analysis.compare import compare_outputs
from analysis.report import build_report
from analysis.slices import SliceExtractor
from analysis.worker import Worker
from common.keys import Keys
from common.records import PairRecord
from common.settings import OutputSettings, settings_from_mapping
from tests import pairs_factory as pf

INFER = "/v2/models/iris/infer"


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> TrialModel:
    return build_models(tmp_path_factory.mktemp("onnx"))["iris_zipmap"]


def oip_primary(model: TrialModel) -> Starlette:
    """An OIP v2 server answering like MLServer's scikit-learn runtime."""

    async def infer(request: Request) -> Response:
        doc = orjson.loads(await request.body())
        tensor = doc["inputs"][0]
        rows = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        labels = model.estimator.predict(rows)
        probs = model.estimator.predict_proba(rows)
        answer: dict[str, Any] = {
            "model_name": "iris",
            "model_version": "v1",
            "id": doc.get("id", ""),
            "parameters": {},
            "outputs": [
                _np_tensor("predict", [len(rows), 1], "INT64", labels.tolist()),
                _np_tensor("predict_proba", list(probs.shape), "FP64", probs.ravel().tolist()),
            ],
        }
        return Response(orjson.dumps(answer), media_type="application/json")

    return Starlette(routes=[Route(INFER, infer, methods=["POST"])])


def _np_tensor(name: str, shape: list[int], datatype: str, data: list[Any]) -> dict[str, Any]:
    params = {"content_type": "np"}
    return {"name": name, "shape": shape, "datatype": datatype, "parameters": params, "data": data}


@pytest.fixture(scope="module")
def primary(iris: TrialModel) -> Iterator[str]:
    with serve_app(oip_primary(iris)) as url:
        yield url


def body(rows: np.ndarray) -> bytes:
    tensor = {
        "name": "input-0",
        "shape": list(rows.shape),
        "datatype": "FP32",
        "data": rows.ravel(),
    }
    return orjson.dumps({"id": "x", "inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)


def test_onnx_candidate_in_the_proxy_agrees_with_the_primary(
    iris: TrialModel, primary: str, redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    candidates = [
        {
            "name": "iris-onnx",
            "onnx": str(iris.path),
            "input": "oip-v2",
            "threads": 1,
            "run": "proxy",
        }
    ]
    slices = [
        {"name": "petal", "from": "$['input-0'][2]", "bins": [2.0, 5.0]},
        {"name": "tenant", "from": "header:X-Tenant"},
    ]
    settings = proxy_settings(
        primary, candidates, prefix=prefix, slices=slices, capture_headers=["x-tenant"]
    )
    batches = [iris.X[i : i + 5] for i in range(0, 150, 5)]
    stream = Keys(prefix).pairs("iris-onnx")
    with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as client:
        for rows in batches:
            response = client.post(px.url + INFER, content=body(rows), headers={"x-tenant": "t1"})
            assert response.status_code == 200
            assert len(orjson.loads(response.content)["outputs"][1]["data"]) == 15
        wait_until(lambda: redis_client.xlen(stream) == len(batches), what="one pair per request")
    records = [PairRecord.from_fields(f) for _, f in redis_client.xrange(stream)]
    assert {r.candidate_outcome for r in records} == {"ok"}

    adapter = select_adapter(OutputSettings())
    extractor = SliceExtractor(settings.slices)
    rows_seen = agreeing = 0
    petals: list[str] = []
    for rec in records:
        p = adapter.parse(rec.request_body, rec.primary_body)
        c = adapter.parse(rec.request_body, rec.candidate_body)
        assert (p.protocol, c.synthetic) == ("oip-v2", True)
        cmp = compare_outputs(p, c, OutputSettings())
        assert cmp.error is None and cmp.contract_diffs == []
        assert all(abs(r.conf_delta or 0) < 1e-5 for r in cmp.rows)
        rows_seen += len(cmp.rows)
        agreeing += sum(r.agree for r in cmp.rows)
        request = orjson.loads(rec.request_body)
        values = extractor.row_values(
            adapter.rows_from_json(request), request, rec.headers, len(p.rows)
        )
        assert {v["tenant"] for v in values} == {"t1"}
        petals += [v["petal"] for v in values]
    assert (rows_seen, agreeing) == (150, 150)
    assert sorted(set(petals)) == ["<2", ">=5", "[2, 5)"]
    assert petals.count("<2") == 50  # iris: the 50 setosa have petals under 2 cm


IRIS_NAMES = ["setosa", "versicolor", "virginica"]


@pytest.mark.parametrize("run", ["proxy", "worker"])
def test_an_onnx_copy_of_the_primary_agrees_through_configured_class_names(
    run: str, iris: TrialModel, primary: str, redis_url: str, prefix: str,
    redis_client: redis.Redis,
) -> None:  # fmt: skip
    """Issue 12: the primary's integer labels go through `[outputs] classes`; the ONNX copy
    declares its integer classes "0", "1", "2" and scored 0% agreement until they did too."""
    raw = {
        "proxy": {"primary": primary},
        "redis": {"prefix": prefix},
        "outputs": {"classes": IRIS_NAMES},
        "candidates": [{"name": "iris-onnx", "onnx": str(iris.path), "run": run}],
    }
    settings = settings_from_mapping(raw, environ={})
    batches = [iris.X[i : i + 5] for i in range(0, 150, 5)]
    stream = Keys(prefix).pairs("iris-onnx")
    with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as client:
        for rows in batches:
            assert client.post(px.url + INFER, content=body(rows)).status_code == 200
        wait_until(lambda: redis_client.xlen(stream) == len(batches), what="one pair per request")
    assert pf.drain(Worker(redis_client, settings)) == len(batches)
    now = max(r.ts_ms for r in _records(redis_client, stream)) / 1000 + 1
    report = build_report(redis_client, Keys(prefix), settings, "iris-onnx", 3600, now=now)
    assert report["agreement"]["n"] == 150
    assert report["agreement"]["disagree"] == 0
    assert report["contract"]["total"] == 0


def _records(client: redis.Redis, stream: str) -> list[PairRecord]:
    return [PairRecord.from_fields(f) for _, f in client.xrange(stream)]
