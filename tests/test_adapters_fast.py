"""The OIP v2 fast path gives exactly what the general path gives, for every answer: the
same ParsedOutput, or the same UnparseableOutput. Fuzzed mostly with answers shaped like
real classification answers (where the fast path fires) and their near misses."""

from __future__ import annotations

import math
import os
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.adapters import select_adapter
from analysis.adapters.base import ParsedOutput, UnparseableOutput
from analysis.adapters.oip_v2 import OipV2Adapter
from common.settings import OutputSettings

N = int(os.environ.get("FUZZ_EXAMPLES", "300"))
ADAPTERS = [OipV2Adapter(OutputSettings()), OipV2Adapter(OutputSettings(classes=("a", "b", "c")))]

probability = st.floats(0, 1) | st.sampled_from([0, 1, 1.5, -0.0, 1e300, math.inf, math.nan])
label = st.sampled_from(["a", "b", "c", "", "1"]) | st.integers(-1, 4) | st.booleans()
label_value = label | st.floats(0, 3) | st.none() | st.lists(label, max_size=2)
prob_value = probability | st.none() | st.text(max_size=2) | st.lists(probability, max_size=3)
label_names = st.sampled_from(["predict", "label", "output_label", "class", "out"])
prob_names = st.sampled_from(["predict_proba", "probabilities", "softmax", "scores", "Prob"])
label_types = st.sampled_from(["BYTES", "INT64", "bool", "FP32", "", "UINT8"])
prob_types = st.sampled_from(["FP64", "FP32", "fp16", "BF16", "INT64", "BYTES"])
classes = st.lists(label, min_size=1, max_size=4) | st.lists(st.floats(0, 1), max_size=2)
_mostly = st.integers(0, 7).map(bool)  # True 7 times in 8


@st.composite
def tensor(draw: Any, names: Any, types: Any, clean: Any, messy: Any, rows: int) -> dict[str, Any]:
    """One output: mostly clean (flat data that fits its shape), now and then not."""
    width = draw(st.integers(0, 4))
    usual = [[rows, width], [rows], [rows, 1]]
    odd = [[rows, width, 1], [], [rows, -1], [rows, draw(st.sampled_from([True, 2.0, "3"]))]]
    shape: list[Any] = draw(st.sampled_from(usual if draw(_mostly) else odd))
    size = math.prod(shape) if all(type(d) is int for d in shape) else 1
    size = min(max(size, 0), 12)
    data = draw(st.lists(clean if draw(_mostly) else messy, min_size=size, max_size=size))
    if not draw(_mostly):
        data = draw(st.sampled_from([[data], data[:-1], data + data[:1], "x", data[0:1] * 2]))
    out: dict[str, Any] = {"name": draw(names), "datatype": draw(types), "shape": shape}
    out["data"] = data
    if not draw(_mostly):
        out["parameters"] = draw(
            st.sampled_from(
                [{}, {"content_type": "np"}, {"classes": draw(classes)}, {"labels": ["x", "y"]}]
            )
        )
    if not draw(_mostly):
        out.pop(draw(st.sampled_from(["name", "data", "shape", "datatype"])))
    if not draw(_mostly):
        out[draw(st.sampled_from(["name", "datatype"]))] = draw(st.sampled_from([1, None, True]))
    return out


@st.composite
def answers(draw: Any) -> dict[str, Any]:
    rows = draw(st.integers(0, 3))
    outputs = [draw(tensor(label_names, label_types, label, label_value, rows))]
    if draw(st.integers(0, 4)):
        outputs.append(draw(tensor(prob_names, prob_types, st.floats(0, 1), prob_value, rows)))
    if draw(st.integers(0, 3)) == 0:
        extra = draw(tensor(st.just("extra"), prob_types, st.floats(0, 1), prob_value, rows))
        outputs.append(extra)
    outputs = draw(st.permutations(outputs)) if draw(st.integers(0, 3)) == 0 else outputs
    doc: dict[str, Any] = {"model_name": "m", "outputs": outputs}
    if draw(st.booleans()):
        doc["parameters"] = draw(st.sampled_from([{}, {"generator": "shadowtrial-onnx"}]))
    return doc


def _outcome(fn: Any, *args: Any) -> ParsedOutput | str:
    try:
        return fn(*args)
    except UnparseableOutput as exc:
        return f"unparseable: {exc}"


@settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=answers())
def test_fast_path_equals_general_path(doc: dict[str, Any]) -> None:
    for adapter in ADAPTERS:
        general = _outcome(adapter.parse_general, doc)
        lifted = adapter.fast.lift(doc)
        if lifted is not None:
            assert lifted == general
        assert _outcome(adapter.parse_json, doc) == general


@settings(max_examples=N // 3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=answers())
def test_auto_detection_takes_the_same_path(doc: dict[str, Any]) -> None:
    """Through bytes and `protocol = "auto"`: the fast path never changes the answer."""
    body = orjson.dumps(doc)  # nan and inf become null
    auto = select_adapter(OutputSettings())
    general = _outcome(ADAPTERS[0].parse_general, orjson.loads(body))
    if isinstance(general, ParsedOutput):
        assert auto.parse(b"{}", body) == general


def test_the_usual_answer_takes_the_fast_path_and_shares_its_contract() -> None:
    adapter = ADAPTERS[0]
    answer = {
        "outputs": [
            {"name": "predict", "shape": [2, 1], "datatype": "BYTES", "data": ["b", "a"]},
            {"name": "predict_proba", "shape": [2, 2], "datatype": "FP64",
             "data": [0.25, 0.75, 0.9, 0.1]},
        ]
    }  # fmt: skip
    first, second = adapter.fast.lift(answer), adapter.fast.lift(answer)
    assert first is not None and first == adapter.parse_general(answer)
    assert second is not None and second.contract is first.contract  # planned once
    assert [r.label for r in first.rows] == ["b", "a"]
    assert first.rows[0].margin == 0.5


def test_fast_constructors_build_the_dataclasses_own_objects() -> None:
    """classified_row, parsed_output and compare's row builder skip the frozen dataclass's
    __init__: what they build must be equal, hash alike, and stay frozen."""
    import dataclasses

    from analysis.adapters.base import (
        ParsedOutput,
        Prediction,
        classified_row,
        parsed_output,
    )
    from analysis.compare import RowComparison, _classified

    row = classified_row("a", (0.75, 0.25), ("a", "b"), 0.75, 0.5)
    slow = Prediction("a", (0.75, 0.25), ("a", "b"), confidence=0.75, margin=0.5)
    assert row == slow and hash(row) == hash(slow)
    assert all(getattr(row, f.name) == getattr(slow, f.name) for f in dataclasses.fields(slow))
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.label = "b"  # type: ignore[misc]
    parsed = parsed_output("oip-v2", "classification", (row,), (), ("a", "b"), False)
    assert parsed == ParsedOutput("oip-v2", "classification", (row,), (), ("a", "b"), False)
    assert vars(parsed) == vars(ParsedOutput("oip-v2", "classification", (row,), (), ("a", "b")))
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.kind = "text"  # type: ignore[misc]
    compared = _classified(True, row, slow, 0.0)
    assert compared == RowComparison(True, row, slow, conf_delta=0.0)
    assert hash(compared) == hash(RowComparison(True, row, slow, conf_delta=0.0))
