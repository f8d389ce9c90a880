"""Fuzz: arbitrary bytes and arbitrary JSON never make parse or compare raise anything but
UnparseableOutput, and request rows / slices never raise at all. Binary tensors and
compressed answers lift like their plain JSON form, and mutated ones are unparseable."""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import random
import struct
import zlib

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.adapters import ADAPTERS, select_adapter
from analysis.adapters.base import ParsedOutput, UnparseableOutput
from analysis.adapters.encoding import decode
from analysis.compare import compare_outputs
from analysis.slices import SliceExtractor
from common import oip_binary
from common.settings import OutputSettings, SliceSettings

# FUZZ_EXAMPLES=5000 for a long hunt; the default keeps the suite quick.
N = int(os.environ.get("FUZZ_EXAMPLES", "150"))
OUTPUTS = [
    OutputSettings(protocol=p, label="$.label[*]", proba="$.p", score="$.x")
    for p in sorted(ADAPTERS)
] + [OutputSettings(classes=("a", "b")), OutputSettings(protocol="tfserving", classes=("a", "b"))]
ADAPTER_LIST = [select_adapter(o) for o in OUTPUTS]
SLICES = SliceExtractor(
    (
        SliceSettings(name="a", source="$.country"),
        SliceSettings(name="b", source="$.instances[*].age", bins=(18.0, 65.0)),
        SliceSettings(name="c", source="header:X-Tenant"),
    )
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
keys = st.sampled_from(
    [
        "outputs", "predictions", "choices", "name", "shape", "datatype", "data", "label",
        "probabilities", "classes", "scores", "message", "content", "logprobs", "text",
        "parameters", "instances", "inputs", "dataframe_split", "columns", "p", "x", "index",
        "finish_reason", "delta", "token_logprobs", "logprob", "generator", "country", "age",
    ]
) | st.text(max_size=6)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5),
    max_leaves=30,
)


def _try_parse(adapter: object, request: bytes, response: bytes) -> ParsedOutput | None:
    try:
        return adapter.parse(request, response)  # type: ignore[attr-defined]
    except UnparseableOutput:
        return None


def _exercise(request: bytes, response: bytes) -> None:
    parsed = [_try_parse(a, request, response) for a in ADAPTER_LIST]
    good = [p for p in parsed if p is not None]
    for outputs in OUTPUTS[:2]:
        for primary in good[:3]:
            for candidate in good[:3]:
                compare_outputs(primary, candidate, outputs)
    for adapter in ADAPTER_LIST[:2]:
        rows = adapter.request_rows(request)
        try:
            doc = orjson.loads(request)
        except orjson.JSONDecodeError:
            doc = None
        SLICES.row_values(rows, doc, {"x-tenant": "t"}, max(len(rows), 1))


@settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=st.binary(max_size=64), response=st.binary(max_size=64))
def test_arbitrary_bytes(request: bytes, response: bytes) -> None:
    _exercise(request, response)
    _exercise(request, b"data: " + response)


@settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=json_values, response=json_values)
def test_arbitrary_json(request: object, response: object) -> None:
    _exercise(orjson.dumps(request), orjson.dumps(response))


tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["label", "probabilities", "out", "predict"]),
        "shape": st.lists(st.integers(min_value=0, max_value=4), max_size=3),
        "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "BOOL", "??"]),
        "data": st.lists(scalars | st.lists(scalars, max_size=3), max_size=12),
    },
    optional={
        "parameters": st.dictionaries(st.sampled_from(["classes", "generator"]), json_values)
    },
)


@settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=st.lists(tensor, max_size=3), b=st.lists(tensor, max_size=3))
def test_oip_v2_shaped_answers(a: list[object], b: list[object]) -> None:
    _exercise(b"{}", orjson.dumps({"outputs": a}))
    pa = _try_parse(ADAPTER_LIST[0], b"{}", orjson.dumps({"outputs": a}))
    pb = _try_parse(ADAPTER_LIST[0], b"{}", orjson.dumps({"outputs": b}))
    if pa is not None and pb is not None:
        compare_outputs(pa, pb, OutputSettings())


predictions = st.lists(
    st.one_of(
        scalars,
        st.lists(st.floats(0, 1), min_size=1, max_size=4),
        st.dictionaries(keys, scalars | st.lists(scalars, max_size=3), max_size=4),
    ),
    max_size=5,
)


@settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=predictions, b=predictions)
def test_prediction_lists(a: list[object], b: list[object]) -> None:
    for adapter in ADAPTER_LIST:
        pa = _try_parse(adapter, b"{}", orjson.dumps({"predictions": a}))
        pb = _try_parse(adapter, b"{}", orjson.dumps({"predictions": b}))
        if pa is not None and pb is not None:
            compare_outputs(pa, pb, OutputSettings())


# -- binary tensors (Triton / KServe) and compressed answers (issue 12) -------------------------

_BINARY_TYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "BOOL": np.bool_}
binary_tensor = st.tuples(
    st.sampled_from(["label", "probabilities", "out", "predict"]),
    st.sampled_from([*_BINARY_TYPES, "BYTES"]),
    # No empty tensors: a body whose binary part is empty is plain JSON (and no answer).
    st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=3),
    st.randoms(use_true_random=False),
)


def _binary(name: str, datatype: str, shape: list[int], rnd: random.Random) -> tuple[dict, bytes]:
    """One tensor as JSON (with `data`) and as tritonclient's binary form."""
    count = math.prod(shape)
    if datatype == "BYTES":
        values = [bytes(rnd.randrange(256) for _ in range(rnd.randrange(5))) for _ in range(count)]
        raw = b"".join(struct.pack("<I", len(v)) + v for v in values)
        data: list[object] = [v.decode("utf-8", "replace") for v in values]
    else:
        array = np.array([rnd.uniform(-3, 3) for _ in range(count)]).astype(_BINARY_TYPES[datatype])
        raw, data = array.tobytes(), array.tolist()
    tensor = {"name": name, "shape": shape, "datatype": datatype}
    return {**tensor, "data": data}, raw


def _binary_body(tensors: list[tuple[str, str, list[int], random.Random]]) -> tuple[bytes, bytes]:
    """The same answer as JSON and as a binary-extension body."""
    built = [_binary(*t) for t in tensors]
    header = [
        {**{k: v for k, v in t.items() if k != "data"}, "parameters": {"binary_data_size": len(r)}}
        for t, r in built
    ]
    as_json = orjson.dumps({"outputs": [t for t, _ in built]})
    return as_json, orjson.dumps({"outputs": header}) + b"".join(r for _, r in built)


def _lifted(parsed: ParsedOutput | None) -> object:
    return None if parsed is None else (parsed.kind, parsed.rows, parsed.contract)


@settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensors=st.lists(binary_tensor, min_size=1, max_size=3))
def test_binary_tensors_lift_like_their_json_form(tensors: list) -> None:
    as_json, as_binary = _binary_body(tensors)
    assert oip_binary.inline(as_binary) == orjson.loads(as_json)
    for adapter in ADAPTER_LIST:
        expected = _lifted(_try_parse(adapter, b"{}", as_json))
        assert _lifted(_try_parse(adapter, b"{}", as_binary)) == expected
    assert ADAPTER_LIST[0].request_rows(as_binary.replace(b"outputs", b"inputs", 1)) == (
        ADAPTER_LIST[0].request_rows(as_json.replace(b"outputs", b"inputs", 1))
    )


mutation = st.tuples(
    st.sampled_from(["cut", "flip", "insert"]),
    st.integers(0, 10**6),
    st.binary(min_size=1, max_size=4),
)


def _mutate(body: bytes, how: tuple[str, int, bytes]) -> bytes:
    kind, at, extra = how
    at %= len(body) + 1
    if kind == "cut":
        return body[:at]
    if kind == "flip" and at < len(body):
        return body[:at] + bytes([body[at] ^ extra[0]]) + body[at + 1 :]
    return body[:at] + extra + body[at:]


@settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensors=st.lists(binary_tensor, min_size=1, max_size=3), how=st.lists(mutation, max_size=3))
def test_mutated_binary_tensors_are_unparseable_or_lifted(tensors: list, how: list) -> None:
    body = _binary_body(tensors)[1]
    for one in how:
        body = _mutate(body, one)
    with contextlib.suppress(ValueError):  # JSONDecodeError and BinaryTensorError both are
        oip_binary.load_body(body)
    _exercise(body, body)
    _exercise(body.replace(b"outputs", b"inputs", 1), b"{}")


@settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=json_values, how=st.lists(mutation, max_size=2), codec=st.sampled_from(["gzip", "zlib"]))
def test_compressed_answers_decode_or_are_unparseable(doc: object, how: list, codec: str) -> None:
    plain = orjson.dumps({"outputs": doc})
    body = gzip.compress(plain) if codec == "gzip" else zlib.compress(plain)
    for adapter in ADAPTER_LIST:
        assert _lifted(_try_parse(adapter, b"{}", body)) == _lifted(
            _try_parse(adapter, b"{}", plain)
        )
    for one in how:
        body = _mutate(body, one)
    _exercise(b"{}", body)
    with contextlib.suppress(UnparseableOutput):
        assert len(decode(body, 1 << 16)) <= 1 << 16


@settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tail=st.binary(max_size=64))
def test_bytes_behind_a_compression_mark(tail: bytes) -> None:
    for mark in (b"\x1f\x8b", b"\x1f\x8b\x08\x00", b"\x78\x9c", b"\x78\x01", b"\x78\xda"):
        _exercise(b"{}", mark + tail)
