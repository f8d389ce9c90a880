"""Answers in the forms real model servers write them, hostile ones included (issue 12).

- Triton's binary tensor extension, the default of tritonclient: requests and answers are
  built byte for byte as tritonclient and Triton build them, sent through the real proxy to
  real HTTP model servers and an ONNX candidate, then compared by the real worker.
- gzip / deflate answers (the client's Accept-Encoding reaches the model): decoded for the
  comparison only, within `[outputs] max_decoded_bytes`; a gzip bomb is counted, not
  expanded.
Whatever does not fit is counted unparseable, never a crash of the worker.
"""

from __future__ import annotations

import gzip
import json
import struct
import time
import tracemalloc
import zlib
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import redis
from fixtures.onnx_models import TrialModel, build_models
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pairs_factory import TS0, drain, oip_answer, write
from proxy_upstreams import running_proxy, wait_until
from servers import serve_app
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from analysis.adapters import select_adapter
from analysis.adapters.base import UnparseableOutput
from analysis.adapters.encoding import decode
from analysis.report import build_report
from analysis.worker import Worker
from common import oip_binary
from common.errors import CandidateError
from common.keys import Keys
from common.records import PairRecord
from common.settings import OutputSettings, Settings, settings_from_mapping
from models.onnx_model import OnnxModel

INFER = "/v2/models/iris/infer"
HEADER_LENGTH = "Inference-Header-Content-Length"
_TRITON_TYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}


# -- the binary tensor extension, as tritonclient and Triton write it ------------------------


def serialize_byte_tensor(values: list[bytes]) -> bytes:
    """tritonclient.utils.serialize_byte_tensor: each element a 4-byte LE length + bytes."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def _binary_tensor(name: str, array: np.ndarray) -> tuple[dict[str, Any], bytes]:
    if array.dtype == np.object_:
        datatype, raw = "BYTES", serialize_byte_tensor(list(array.ravel()))
    else:
        datatype, raw = _TRITON_TYPES[str(array.dtype)], array.tobytes()
    params = {"binary_data_size": len(raw)}
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "parameters": params,
    }, raw


def triton_request(inputs: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """tritonclient.http `_get_inference_request` with `set_data_from_numpy(binary_data=True)`
    (its default) and no outputs named: the JSON (rapidjson: no spaces) then the raw data."""
    tensors, raws = zip(*(_binary_tensor(n, a) for n, a in inputs.items()), strict=True)
    request = {"inputs": list(tensors), "parameters": {"binary_data_output": True}}
    header = json.dumps(request, separators=(",", ":")).encode()
    return header + b"".join(raws), len(header)


def triton_answer(outputs: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """Triton's HTTP answer to a request asking binary_data_output."""
    tensors, raws = zip(*(_binary_tensor(n, a) for n, a in outputs.items()), strict=True)
    answer = {"model_name": "iris", "model_version": "1", "outputs": list(tensors)}
    header = json.dumps(answer, separators=(",", ":")).encode()
    return header + b"".join(raws), len(header)


def split_inputs(body: bytes, header_length: int) -> np.ndarray:
    """What Triton does with a request: the header by its announced length, then the data."""
    doc = json.loads(body[:header_length])
    tensor = doc["inputs"][0]
    size = tensor["parameters"]["binary_data_size"]
    data = body[header_length : header_length + size]
    return np.frombuffer(data, dtype=np.float32).reshape(tensor["shape"])


def _classify(model: TrialModel, rows: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "predict": model.estimator.predict(rows).astype(np.int64),
        "probabilities": model.estimator.predict_proba(rows).astype(np.float32),
    }


def triton_primary(model: TrialModel) -> Starlette:
    """A Triton-like server: binary tensors in, binary tensors out."""

    async def infer(request: Request) -> Response:
        rows = split_inputs(await request.body(), int(request.headers[HEADER_LENGTH]))
        body, length = triton_answer(_classify(model, rows))
        headers = {HEADER_LENGTH: str(length)}
        return Response(body, headers=headers, media_type="application/octet-stream")

    return Starlette(routes=[Route(INFER, infer, methods=["POST"])])


def json_candidate(model: TrialModel) -> Starlette:
    """The same model behind a server that reads binary requests and answers JSON."""

    async def infer(request: Request) -> Response:
        rows = split_inputs(await request.body(), int(request.headers[HEADER_LENGTH]))
        out = _classify(model, rows)
        tensors = [
            {"name": n, "shape": list(a.shape), "datatype": _TRITON_TYPES[str(a.dtype)],
             "data": a.ravel().tolist()}
            for n, a in out.items()
        ]  # fmt: skip
        return Response(orjson.dumps({"outputs": tensors}), media_type="application/json")

    return Starlette(routes=[Route(INFER, infer, methods=["POST"])])


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> TrialModel:
    return build_models(tmp_path_factory.mktemp("onnx"))["iris_nozipmap"]


def _settings(primary: str, prefix: str, candidates: list[dict[str, Any]]) -> Settings:
    raw = {
        "proxy": {"primary": primary},
        "redis": {"prefix": prefix},
        "candidates": candidates,
        "slices": [{"name": "petal", "from": "$.input__0[2]", "bins": [2.0, 5.0]}],
    }
    return settings_from_mapping(raw, environ={})


def _report(client: redis.Redis, prefix: str, settings: Settings, name: str) -> dict[str, Any]:
    records = [PairRecord.from_fields(f) for _, f in client.xrange(Keys(prefix).pairs(name))]
    now = max(r.ts_ms for r in records) / 1000 + 1
    return build_report(client, Keys(prefix), settings, name, 3600, now=now)


def test_triton_binary_tensors_are_compared_like_json_ones(
    iris: TrialModel, redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    """tritonclient's default (binary tensors both ways) was counted unparseable: now a
    binary primary, a JSON candidate and an ONNX candidate fed the binary request agree."""
    batches = [iris.X[i : i + 10] for i in range(0, 150, 10)]
    with serve_app(triton_primary(iris)) as primary, serve_app(json_candidate(iris)) as cand:
        candidates = [
            {"name": "json", "url": cand},
            {"name": "onnx", "onnx": str(iris.path), "run": "worker"},
        ]
        settings = _settings(primary, prefix, candidates)
        with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as client:
            for rows in batches:
                body, length = triton_request({"input__0": rows})
                sent = {HEADER_LENGTH: str(length), "content-type": "application/octet-stream"}
                answer = client.post(px.url + INFER, content=body, headers=sent)
                assert answer.status_code == 200
                assert answer.content == triton_answer(_classify(iris, rows))[0]  # untouched
            for name in ("json", "onnx"):
                stream = Keys(prefix).pairs(name)
                wait_until(lambda s=stream: redis_client.xlen(s) == len(batches), what=name)
    assert drain(Worker(redis_client, settings)) == 2 * len(batches)
    for name in ("json", "onnx"):
        report = _report(redis_client, prefix, settings, name)
        assert report["unparseable"] == {"primary": 0, "candidate": 0, "samples": []}, name
        assert (report["agreement"]["n"], report["agreement"]["disagree"]) == (150, 0), name
    slices = _report(redis_client, prefix, settings, "json")["slices"]
    petals = {r["value"]: r["pairs"] for r in slices if r["slice"] == "petal"}
    assert petals["<2"] == 50  # the binary request's rows reach the slices


# -- malformed binary tensors: counted unparseable, never a crash ------------------------------


def _answer(tensors: list[dict[str, Any]], raw: bytes) -> bytes:
    return orjson.dumps({"outputs": tensors}) + raw


def _fp32(n: int, size: int | object, shape: list[Any] | None = None) -> dict[str, Any]:
    return {"name": "p", "datatype": "FP32", "shape": shape or [n, 1],
            "parameters": {"binary_data_size": size}}  # fmt: skip


def _bytes_tensor(n: int, size: int) -> dict[str, Any]:
    return {"name": "label", "datatype": "BYTES", "shape": [n],
            "parameters": {"binary_data_size": size}}  # fmt: skip


_FLOATS = np.arange(4, dtype=np.float32).tobytes()
MALFORMED = {
    "announces more than the body holds": _answer([_fp32(4, 20)], _FLOATS),
    "announces less than the body holds": _answer([_fp32(4, 12)], _FLOATS),
    "size disagrees with the shape": _answer([_fp32(3, 16)], _FLOATS),
    "a shape of a billion billion rows": _answer([_fp32(4, 16, [2**40, 2**40])], _FLOATS),
    "a negative size": _answer([_fp32(4, -16)], _FLOATS),
    "a size as text": _answer([_fp32(4, "16")], _FLOATS),
    "a datatype with no binary form": _answer([{**_fp32(4, 16), "datatype": "FP8"}], _FLOATS),
    "data and binary at once": _answer([{**_fp32(4, 16), "data": [1, 2, 3, 4]}], _FLOATS),
    "a BYTES length past the end": _answer(
        [_bytes_tensor(2, 9)], struct.pack("<I", 1) + b"a" + struct.pack("<I", 99)
    ),
    "BYTES left over": _answer([_bytes_tensor(1, 7)], struct.pack("<I", 1) + b"abc"),
    "a BYTES count the data cannot hold": _answer([_bytes_tensor(10**9, 8)], bytes(8)),
    "a header cut short": orjson.dumps({"outputs": [_fp32(4, 16)]})[:-3] + _FLOATS,
    "a header nested beyond the recursion limit": b'{"binary_data_size":'
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}\x00",
}


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_binary_tensors_are_unparseable(body: bytes) -> None:
    for adapter in (select_adapter(OutputSettings()), select_adapter(OutputSettings("oip-v2"))):
        with pytest.raises(UnparseableOutput):
            adapter.parse(b"", body)
        assert adapter.request_rows(body) == []


def test_malformed_binary_answers_are_counted_by_the_worker(
    redis_client: redis.Redis, prefix: str
) -> None:
    settings = settings_from_mapping({"redis": {"prefix": prefix}}, environ={})
    good = oip_answer([[0.9, 0.1]], classes=("a", "b"))
    records = [
        PairRecord(f"r{i}", "c", TS0 + i, primary_status=200, primary_body=good,
                   candidate_status=200, candidate_body=body)
        for i, body in enumerate(MALFORMED.values())
    ]  # fmt: skip
    write(redis_client, Keys(prefix).pairs("c"), records)
    assert drain(Worker(redis_client, settings)) == len(MALFORMED)
    report = build_report(redis_client, Keys(prefix), settings, "c", 3600, now=TS0 / 1000 + 30)
    assert report["unparseable"]["candidate"] == len(MALFORMED)
    assert report["agreement"]["n"] == len(MALFORMED)


# -- compressed answers ---------------------------------------------------------------------


def oip_json(model: TrialModel) -> Starlette:
    """An OIP v2 JSON server behind Starlette's GZipMiddleware (gzip when asked, any size)."""

    async def infer(request: Request) -> Response:
        doc = orjson.loads(await request.body())
        rows = np.asarray(doc["inputs"][0]["data"], dtype=np.float32).reshape(-1, 4)
        out = _classify(model, rows)
        tensors = [
            {"name": n, "shape": list(a.shape), "datatype": _TRITON_TYPES[str(a.dtype)],
             "data": a.ravel().tolist()}
            for n, a in out.items()
        ]  # fmt: skip
        return Response(orjson.dumps({"outputs": tensors}), media_type="application/json")

    middleware = [Middleware(GZipMiddleware, minimum_size=0)]
    return Starlette(routes=[Route(INFER, infer, methods=["POST"])], middleware=middleware)


def _json_request(rows: np.ndarray) -> bytes:
    tensor = {"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel()}
    return orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)


def test_gzip_answers_are_decoded_for_the_comparison_and_kept_as_sent(
    iris: TrialModel, redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    """Counted unparseable before: the worker now decodes; client and record keep gzip."""
    batches = [iris.X[i : i + 10] for i in range(0, 150, 10)]
    with serve_app(oip_json(iris)) as primary, serve_app(oip_json(iris)) as cand:
        settings = _settings(primary, prefix, [{"name": "gz", "url": cand}])
        with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as client:
            for rows in batches:
                sent = {"accept-encoding": "gzip"}
                with client.stream("POST", px.url + INFER, content=_json_request(rows),
                                   headers=sent) as answer:  # fmt: skip
                    raw = b"".join(answer.iter_raw())
                    assert answer.headers["content-encoding"] == "gzip"
                assert orjson.loads(gzip.decompress(raw))["outputs"][0]["shape"] == [10]
            stream = Keys(prefix).pairs("gz")
            wait_until(lambda: redis_client.xlen(stream) == len(batches), what="pairs")
    records = [PairRecord.from_fields(f) for _, f in redis_client.xrange(stream)]
    assert all(r.primary_body[:2] == r.candidate_body[:2] == b"\x1f\x8b" for r in records)
    assert drain(Worker(redis_client, settings)) == len(batches)
    report = _report(redis_client, prefix, settings, "gz")
    assert report["unparseable"] == {"primary": 0, "candidate": 0, "samples": []}
    assert (report["agreement"]["n"], report["agreement"]["disagree"]) == (150, 0)


LIMIT = 1 << 20


def _bomb(size: int) -> bytes:
    """`size` bytes of JSON whitespace inside an answer, gzipped to about size / 1000."""
    return gzip.compress(b'{"outputs":' + b" " * size + b"[]}", compresslevel=9)


def test_a_gzip_bomb_is_refused_without_being_expanded() -> None:
    bomb = _bomb(256 << 20)  # 256 MiB expanded, ~250 KB sent
    assert len(bomb) < 300_000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(UnparseableOutput, match="expands beyond"):
            decode(bomb, LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * LIMIT  # never near the 256 MiB it would expand to
    assert time.perf_counter() - started < 2.0


ANSWER = oip_answer([[0.9, 0.1]], classes=("a", "b"))
COMPRESSED = {
    "gzip": gzip.compress(ANSWER),
    "deflate": zlib.compress(ANSWER),
    "two gzip members": gzip.compress(ANSWER[:20]) + gzip.compress(ANSWER[20:]),
}
BROKEN = {
    "truncated gzip": COMPRESSED["gzip"][:-12],
    "corrupt gzip": COMPRESSED["gzip"][:12] + b"\xff" * 20 + COMPRESSED["gzip"][32:],
    "gzip of a bomb": _bomb(4 << 20),
    "gzip of garbage": gzip.compress(b"\x00\xff not json"),
    "gzip magic alone": b"\x1f\x8b",
}


@pytest.mark.parametrize("body", list(COMPRESSED.values()), ids=list(COMPRESSED))
def test_compressed_answers_lift_like_plain_ones(body: bytes) -> None:
    adapter = select_adapter(OutputSettings(max_decoded_bytes=LIMIT))
    assert [r.label for r in adapter.parse(b"", body).rows] == ["a"]


def test_compressed_answers_are_counted_when_they_cannot_be_read(
    redis_client: redis.Redis, prefix: str
) -> None:
    raw = {"redis": {"prefix": prefix}, "outputs": {"max_decoded_bytes": LIMIT}}
    settings = settings_from_mapping(raw, environ={})
    good = oip_answer([[0.9, 0.1]], classes=("a", "b"))
    bodies = [*COMPRESSED.values(), *BROKEN.values()]
    records = [
        PairRecord(f"r{i}", "c", TS0 + i, primary_status=200, primary_body=good,
                   candidate_status=200, candidate_body=body)
        for i, body in enumerate(bodies)
    ]  # fmt: skip
    write(redis_client, Keys(prefix).pairs("c"), records)
    assert drain(Worker(redis_client, settings)) == len(bodies)
    report = build_report(redis_client, Keys(prefix), settings, "c", 3600, now=TS0 / 1000 + 30)
    assert report["unparseable"]["candidate"] == len(BROKEN)
    assert report["agreement"]["n"] == len(bodies)
    assert report["agreement"]["disagree"] == len(BROKEN)  # ERR rows, the rest agree


# -- the ONNX runner fed tritonclient's requests ----------------------------------------------


@pytest.fixture(scope="module")
def onnx_iris(iris: TrialModel) -> OnnxModel:
    raw = {"candidates": [{"name": "onnx", "onnx": str(iris.path)}]}
    return OnnxModel.load(settings_from_mapping(raw, environ={}).candidates[0])


def test_the_onnx_runner_answers_binary_requests_as_their_json_form(
    iris: TrialModel, onnx_iris: OnnxModel
) -> None:
    rows = iris.X[:7]
    binary = onnx_iris.predict_body(triton_request({"input__0": rows})[0])
    assert binary == onnx_iris.predict_body(_json_request(rows))


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(cut=st.integers(0, 200), flip=st.integers(0, 200), xor=st.integers(1, 255))
def test_mutated_binary_requests_are_errors_of_the_onnx_candidate(
    onnx_iris: OnnxModel, cut: int, flip: int, xor: int
) -> None:
    body = bytearray(triton_request({"input__0": np.ones((2, 4), dtype=np.float32)})[0])
    body[flip % len(body)] ^= xor
    for request in (bytes(body), bytes(body[: len(body) - cut % len(body)])):
        answer = onnx_iris.predict_bodies([request, request])
        assert all(isinstance(a, bytes | CandidateError) for a in answer)


def test_half_precision_binary_tensors_read_as_tritonclient_writes_them() -> None:
    """BF16 as tritonclient's serialize_bf16_tensor writes it (the upper half of each
    little-endian float32), FP16 as numpy's bytes."""
    values = np.array([1.0, -2.5, 0.15625, 384.0], dtype=np.float32)
    bf16 = b"".join(v.tobytes()[2:4] for v in values)
    tensors = [
        {"name": "b", "shape": [4], "datatype": "BF16", "parameters": {"binary_data_size": 8}},
        {"name": "h", "shape": [2, 2], "datatype": "FP16", "parameters": {"binary_data_size": 8}},
    ]
    doc = oip_binary.inline(_answer(tensors, bf16 + values.astype(np.float16).tobytes()))
    assert doc is not None
    assert [t["data"] for t in doc["outputs"]] == [values.tolist(), values.tolist()]
    assert [t.get("parameters") for t in doc["outputs"]] == [None, None]
