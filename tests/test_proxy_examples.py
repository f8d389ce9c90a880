"""The example model server (OIP-v2) and the example config the README runs."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis
from fixtures.onnx_models import tiny_model
from proxy_upstreams import proxy_settings, running_proxy, wait_until
from servers import serve_app

from common.keys import Keys
from common.records import PairRecord
from common.settings import load_settings
from proxy.runner import MirrorRequest
from shadowtrial.examples.model_server import create_app

REPO = Path(__file__).resolve().parents[1]
ROWS = [[0.2, 0.1, -0.4], [2.0, 0.0, 1.0], [0.05, 0.0, 0.3]]


def infer_body(rows: list[list[float]]) -> dict[str, object]:
    flat = [x for row in rows for x in row]
    shape = [len(rows), len(rows[0])]
    return {
        "id": "q1",
        "inputs": [{"name": "features", "shape": shape, "datatype": "FP32", "data": flat}],
    }


def test_model_server_variants_answer_oip_v2() -> None:
    answers = {}
    for variant in ("v1", "v2"):
        with serve_app(create_app(variant)) as url:
            response = httpx.post(url + "/v2/models/m/infer", json=infer_body(ROWS))
            assert response.status_code == 200
            answers[variant] = response.json()
            assert httpx.get(url + "/v2/health/ready").status_code == 200
            bad = httpx.post(url + "/v2/models/m/infer", json={"inputs": []})
            assert bad.status_code == 400 and bad.json()["error"] == "bad input"
    v1 = answers["v1"]
    assert v1["id"] == "q1" and v1["model_version"] == "v1"
    labels = {k: a["outputs"][0]["data"] for k, a in answers.items()}
    assert len(labels["v1"]) == 3 and labels["v1"][1] == labels["v2"][1] == "positive"
    assert labels["v1"] != labels["v2"]  # the near-boundary rows flip
    probs = v1["outputs"][1]
    assert probs["shape"] == [3, 2] and abs(sum(probs["data"][:2]) - 1) < 1e-5


def test_model_server_error_variant() -> None:
    with serve_app(create_app("error")) as url:
        response = httpx.post(url + "/v2/models/m/infer", json=infer_body(ROWS))
    assert response.status_code == 500 and response.json()["error"] == "model failed"


def test_example_config_is_valid() -> None:
    settings = load_settings(REPO / "examples" / "shadowtrial.toml", environ={})
    assert settings.proxy.primary == "http://127.0.0.1:8001"
    assert [c.name for c in settings.candidates] == ["v2"]


def test_worker_run_onnx_candidate_is_recorded_as_deferred(
    redis_url: str, prefix: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    model = str(tiny_model(tmp_path, "sum"))  # serve checks a worker-run model loads
    with serve_app(create_app("v1")) as primary:
        settings = proxy_settings(
            primary, [{"name": "later", "onnx": model, "run": "worker"}], prefix=prefix
        )
        with running_proxy(settings, redis_url) as px:
            response = httpx.post(px.url + "/v2/models/m/infer", json=infer_body(ROWS))
            assert response.status_code == 200
            wait_until(lambda: px.captured("later", "recorded") == 1, what="deferred pair")
    (entry,) = redis_client.xrange(Keys(prefix).pairs("later"))
    record = PairRecord.from_fields(entry[1])
    assert record.candidate_outcome == "deferred" and record.candidate_body == b""
    assert record.primary_body == response.content
    assert record.request_body == response.request.content


@pytest.mark.parametrize(("headers", "expected"), [([("Content-Type", "a/b")], "a/b"), ([], "")])
def test_mirror_request_content_type(headers: list[tuple[str, str]], expected: str) -> None:
    assert MirrorRequest("r", "POST", "/", "", headers, b"").content_type == expected
