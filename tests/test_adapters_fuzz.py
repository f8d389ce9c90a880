"""Fuzz: arbitrary bytes and arbitrary JSON never make parse or compare raise anything but
UnparseableOutput, and request rows / slices never raise at all."""

from __future__ import annotations

import os

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.adapters import ADAPTERS, select_adapter
from analysis.adapters.base import ParsedOutput, UnparseableOutput
from analysis.compare import compare_outputs
from analysis.slices import SliceExtractor
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
