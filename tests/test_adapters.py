"""Output adapters on real request/response bodies of every protocol (tests/fixtures/bodies)."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from analysis.adapters import ADAPTERS, select_adapter
from analysis.adapters.base import (
    KIND_CLASSIFICATION,
    KIND_REGRESSION,
    KIND_TEXT,
    UnparseableOutput,
)
from common.errors import ConfigError
from common.settings import OutputSettings

BODIES = Path(__file__).parent / "fixtures" / "bodies"
AUTO = select_adapter(OutputSettings())


def body(name: str) -> bytes:
    return (BODIES / name).read_bytes()


def parse(name: str, request: str | None = None, **outputs: object) -> object:
    adapter = select_adapter(OutputSettings(**outputs)) if outputs else AUTO  # type: ignore[arg-type]
    return adapter.parse(body(request) if request else b"{}", body(name))


# -- OIP v2 -------------------------------------------------------------------------------


def test_oip_v2_mlserver_label_and_proba_tensors() -> None:
    out = parse("oip_v2_mlserver_sklearn.json", "oip_v2_request_iris.json")
    assert (out.protocol, out.kind) == ("oip-v2", KIND_CLASSIFICATION)
    assert [r.label for r in out.rows] == ["0", "1", "2"]
    assert out.rows[1].probs == (0.011, 0.862, 0.127)
    assert out.rows[1].confidence == pytest.approx(0.862)
    assert out.rows[1].margin == pytest.approx(0.862 - 0.127)
    assert [(f.name, f.datatype, f.shape) for f in out.contract] == [
        ("predict", "INT64", (1,)),
        ("predict_proba", "FP64", (3,)),
    ]
    assert not out.synthetic


def test_oip_v2_triton_multi_output_with_class_names() -> None:
    out = parse("oip_v2_triton_multi.json")
    assert [r.label for r in out.rows] == ["legit", "fraud", "legit", "legit"]
    assert out.rows[2].classes == ("legit", "fraud")
    assert out.rows[2].margin == pytest.approx(0.10)
    assert out.labels == ("legit", "fraud")


def test_oip_v2_probability_only_output_takes_argmax_index() -> None:
    out = parse("oip_v2_triton_softmax_only.json")
    assert out.kind == KIND_CLASSIFICATION
    assert [r.label for r in out.rows] == ["0", "2"]


def test_oip_v2_probability_only_output_uses_configured_class_names() -> None:
    out = parse("oip_v2_triton_softmax_only.json", classes=("cat", "dog", "fox"))
    assert [r.label for r in out.rows] == ["cat", "fox"]
    assert out.labels == ("cat", "dog", "fox")


def test_oip_v2_regression() -> None:
    out = parse("oip_v2_regression.json")
    assert out.kind == KIND_REGRESSION
    assert [r.score for r in out.rows] == [151.2, 75.03, 141.9]
    assert out.rows[0].label is None


def test_oip_v2_nested_data_and_binary_single_probability() -> None:
    answer = {
        "outputs": [
            {"name": "probability", "shape": [2, 1], "datatype": "FP32", "data": [[0.8], [0.3]]}
        ]
    }
    out = AUTO.parse(b"{}", orjson.dumps(answer))
    assert out.rows[0].probs == pytest.approx((0.2, 0.8))
    assert out.rows[0].margin == pytest.approx(abs(2 * 0.8 - 1))
    assert [r.label for r in out.rows] == ["1", "0"]


def test_oip_v2_integer_label_maps_to_configured_class_name() -> None:
    answer = {"outputs": [{"name": "label", "shape": [2], "datatype": "INT64", "data": [1, 0]}]}
    out = select_adapter(OutputSettings(classes=("no", "yes"))).parse(b"", orjson.dumps(answer))
    assert [r.label for r in out.rows] == ["yes", "no"]


@pytest.mark.parametrize(
    "answer",
    [
        {"outputs": [{"name": "p", "shape": [2, 2], "datatype": "FP32", "data": [0.1, 0.9, 1]}]},
        {"outputs": [{"name": "p", "shape": "2", "datatype": "FP32", "data": [1, 2]}]},
        {
            "outputs": [
                {"name": "a", "shape": [2], "datatype": "INT64", "data": [1, 2]},
                {"name": "b", "shape": [3], "datatype": "FP32", "data": [0.1, 0.2, 0.3]},
            ]
        },
        {"outputs": [{"name": "p", "shape": [1], "datatype": "FP32", "data": ["x"]}]},
    ],
    ids=["data-vs-shape", "shape-not-list", "row-counts-differ", "strings-in-fp32"],
)
def test_oip_v2_inconsistent_tensors_are_unparseable(answer: object) -> None:
    with pytest.raises(UnparseableOutput):
        select_adapter(OutputSettings(protocol="oip-v2")).parse(b"", orjson.dumps(answer))


def test_oip_v2_request_rows_from_one_wide_tensor_and_from_column_tensors() -> None:
    rows = AUTO.request_rows(body("oip_v2_request_iris.json"))
    assert rows == [
        {"input-0": [5.1, 3.5, 1.4, 0.2]},
        {"input-0": [6.4, 3.2, 4.5, 1.5]},
        {"input-0": [6.3, 3.3, 6.0, 2.5]},
    ]
    columns = AUTO.request_rows(body("oip_v2_request_columns.json"))
    assert columns[1] == {"country": "FR", "age": 41, "amount": 300.0}
    assert len(columns) == 3


def test_oip_v2_dict_like_row_inputs() -> None:
    request = {"inputs": [{"country": "DE", "age": 23}, {"country": "FR", "age": 41}]}
    assert AUTO.request_rows(orjson.dumps(request))[1] == {"country": "FR", "age": 41}


# -- TF-Serving / KServe v1 -------------------------------------------------------------------


def test_tfserving_softmax_rows_are_probabilities() -> None:
    out = parse("tfserving_softmax.json", "tfserving_request_instances.json")
    assert (out.protocol, out.kind) == ("tfserving", KIND_CLASSIFICATION)
    assert [r.label for r in out.rows] == ["0", "1", "2"]
    assert out.rows[0].confidence == pytest.approx(0.9713)


def test_tfserving_estimator_rows_carry_class_names() -> None:
    out = parse("tfserving_estimator.json")
    assert [r.label for r in out.rows] == ["setosa", "versicolor", "virginica"]
    assert out.labels == ("setosa", "versicolor", "virginica")


def test_tfserving_canned_classifier_uses_class_ids_and_all_classes() -> None:
    out = parse("tfserving_canned_classifier.json")
    assert [r.label for r in out.rows] == ["1", "0"]
    assert out.rows[0].probs == (0.1877, 0.8123)
    assert out.labels == ("0", "1")


def test_tfserving_columnar_outputs() -> None:
    out = parse("tfserving_columnar_outputs.json")
    assert [r.label for r in out.rows] == ["yes", "no"]


def test_kserve_v1_labels_and_regression() -> None:
    labels = parse("kserve_v1_sklearn_labels.json")
    assert (labels.kind, [r.label for r in labels.rows]) == (KIND_CLASSIFICATION, ["0", "1", "2"])
    reg = parse("kserve_v1_regression.json")
    assert (reg.kind, reg.rows[1].score) == (KIND_REGRESSION, 75.03)


def test_tfserving_float_scalars_are_binary_probabilities_when_two_classes_are_set() -> None:
    plain = select_adapter(OutputSettings(protocol="tfserving"))
    assert plain.parse(b"", b'{"predictions": [0.12, 0.88]}').kind == KIND_REGRESSION
    out = select_adapter(OutputSettings(protocol="tfserving", classes=("ham", "spam"))).parse(
        b"", b'{"predictions": [0.12, 0.88]}'
    )
    assert [r.label for r in out.rows] == ["ham", "spam"]
    assert out.rows[1].probs == pytest.approx((0.12, 0.88))


def test_tfserving_request_rows() -> None:
    rows = AUTO.request_rows(body("tfserving_request_instances.json"))
    assert rows[0] == {"0": 5.1, "1": 3.5, "2": 1.4, "3": 0.2}
    assert AUTO.request_rows(body("tfserving_request_dicts.json"))[2] == {
        "country": "US",
        "age": 67,
    }
    assert AUTO.request_rows(body("tfserving_request_columnar.json")) == [
        {"country": "DE", "age": 23},
        {"country": "FR", "age": 41},
    ]


# -- MLflow -----------------------------------------------------------------------------------


def test_mlflow_detected_from_dataframe_request() -> None:
    out = parse("mlflow_labels.json", "mlflow_request_split.json")
    assert (out.protocol, [r.label for r in out.rows]) == ("mlflow", ["0", "1", "0"])


def test_mlflow_records_with_prefixed_probability_columns() -> None:
    out = parse("mlflow_records_proba.json", "mlflow_request_split.json")
    assert [r.label for r in out.rows] == ["ham", "spam", "ham"]
    assert out.rows[2].classes == ("ham", "spam")
    assert out.rows[2].margin == pytest.approx(0.22)
    assert {f.name for f in out.contract} == {"label", "probability_ham", "probability_spam"}


def test_mlflow_legacy_bare_list() -> None:
    out = parse("mlflow_legacy_list.json")
    assert (out.protocol, out.kind, len(out.rows)) == ("mlflow", KIND_REGRESSION, 3)


def test_mlflow_request_rows_split_and_records() -> None:
    split = AUTO.request_rows(body("mlflow_request_split.json"))
    assert split[2] == {"country": "DE", "age": 67, "amount": 78.25}
    records = AUTO.request_rows(body("mlflow_request_records.json"))
    assert records[1]["country"] == "FR"


def test_mlflow_zipmap_dicts_as_predictions() -> None:
    answer = {"predictions": [{"a": 0.7, "b": 0.3}, {"a": 0.1, "b": 0.9}]}
    out = select_adapter(OutputSettings(protocol="mlflow")).parse(b"", orjson.dumps(answer))
    assert [r.label for r in out.rows] == ["a", "b"]


# -- OpenAI -----------------------------------------------------------------------------------


def test_openai_chat_with_logprobs() -> None:
    out = parse("openai_chat_logprobs.json", "openai_chat_request.json")
    (row,) = out.rows
    assert (out.protocol, out.kind) == ("openai", KIND_TEXT)
    assert row.text == "Yes, it shipped  today."
    assert row.confidence == pytest.approx(math.exp(-0.0513))
    assert row.mean_logprob == pytest.approx((-0.0513 - 0.2 - 0.4 - 0.9 - 1.1) / 5)
    assert row.finish_reason == "stop"


def test_openai_chat_without_logprobs() -> None:
    (row,) = parse("openai_chat_plain.json").rows
    assert (row.text, row.confidence, row.mean_logprob) == ("Yes, it shipped today.", None, None)


def test_openai_choices_in_index_order_with_tool_calls() -> None:
    out = parse("openai_chat_n2.json")
    assert out.rows[0].finish_reason == "tool_calls"
    assert "lookup_order" in (out.rows[0].text or "")
    assert "call_abc" not in (out.rows[0].text or "")  # random ids never make answers differ
    assert out.rows[1].text == "No."


def test_openai_completion_logprobs() -> None:
    (row,) = parse("openai_completion_logprobs.json").rows
    assert row.text == " Paris"
    assert row.confidence == pytest.approx(math.exp(-0.0021))


def test_openai_stream_is_reassembled() -> None:
    (row,) = parse("openai_chat_stream.txt").rows
    assert row.text == "Yes, shipped."
    assert row.confidence == pytest.approx(math.exp(-0.1))
    assert row.mean_logprob == pytest.approx(-0.3)
    assert row.finish_reason == "stop"


def test_openai_request_row_keeps_request_level_fields() -> None:
    (row,) = AUTO.request_rows(body("openai_chat_request.json"))
    assert row["user"] == "tenant-7"
    assert row["metadata"] == {"route": "support"}
    assert "messages" not in row


# -- jsonpath ---------------------------------------------------------------------------------


def test_jsonpath_label_and_proba_paths() -> None:
    out = parse(
        "custom_scoring.json",
        protocol="jsonpath",
        label="$.result.items[*].decision",
        proba="$.result.items[*].p",
        classes=("approve", "review", "deny"),
    )
    assert [r.label for r in out.rows] == ["approve", "deny"]
    assert out.rows[1].confidence == pytest.approx(0.80)
    assert out.rows[1].classes == ("approve", "review", "deny")


def test_jsonpath_proba_as_class_to_probability_objects() -> None:
    adapter = select_adapter(OutputSettings(protocol="jsonpath", proba="$.result.items[*].scores"))
    out = adapter.parse(b"", body("custom_scoring.json"))
    assert [r.label for r in out.rows] == ["approve", "deny"]
    assert out.rows[0].classes == out.labels == ("approve", "review", "deny")


def test_jsonpath_list_without_wildcard_is_one_row_per_element() -> None:
    adapter = select_adapter(OutputSettings(protocol="jsonpath", score="$.y"))
    out = adapter.parse(b"", b'{"y": [1.5, 2.5, 3.0]}')
    assert (out.kind, [r.score for r in out.rows]) == (KIND_REGRESSION, [1.5, 2.5, 3.0])


def test_jsonpath_paths_disagreeing_on_rows_is_unparseable() -> None:
    adapter = select_adapter(OutputSettings(protocol="jsonpath", label="$.l", score="$.s[*]"))
    with pytest.raises(UnparseableOutput):
        adapter.parse(b"", b'{"l": ["a", "b"], "s": [1.0]}')


def test_jsonpath_needs_a_path_and_valid_syntax() -> None:
    with pytest.raises(ConfigError):
        select_adapter(OutputSettings(protocol="jsonpath"))
    with pytest.raises(ConfigError, match=r"outputs\.label"):
        select_adapter(OutputSettings(protocol="jsonpath", label="$.a[?(@.x)]"))


def test_auto_falls_back_to_configured_paths() -> None:
    out = parse("custom_scoring.json", label="$.result.items[*].decision")
    assert (out.protocol, [r.label for r in out.rows]) == ("jsonpath", ["approve", "deny"])


# -- explicit protocol, unparseable bodies ----------------------------------------------------


@pytest.mark.parametrize("protocol", sorted(ADAPTERS))
def test_every_protocol_reads_onnx_candidate_answers(protocol: str) -> None:
    adapter = select_adapter(OutputSettings(protocol=protocol, label="$.label"))
    out = adapter.parse(body("tfserving_request_instances.json"), body("onnx_candidate_iris.json"))
    assert out.synthetic and out.protocol == "oip-v2"
    assert [r.label for r in out.rows] == ["setosa", "versicolor", "virginica"]
    assert out.labels == ("setosa", "versicolor", "virginica")


def test_explicit_protocol_wins_over_detection() -> None:
    with pytest.raises(UnparseableOutput):
        parse("tfserving_softmax.json", protocol="oip-v2")
    assert parse("tfserving_softmax.json", protocol="mlflow").protocol == "mlflow"


@pytest.mark.parametrize("protocol", sorted(ADAPTERS))
@pytest.mark.parametrize(
    "raw",
    [b"", b"<html>502 Bad Gateway</html>", b"\xff\xfe\x00", b"null", b"42", b'"text"', b"{}"],
)
def test_non_json_and_unknown_bodies_are_unparseable(protocol: str, raw: bytes) -> None:
    adapter = select_adapter(OutputSettings(protocol=protocol, label="$.label"))
    with pytest.raises(UnparseableOutput):
        adapter.parse(b"{}", raw)


@pytest.mark.parametrize("name", ["oip_v2_error.json", "mlflow_error.json", "openai_error.json"])
def test_error_bodies_are_unparseable_with_their_message(name: str) -> None:
    with pytest.raises(UnparseableOutput, match="error body"):
        parse(name, "mlflow_request_split.json")


def test_request_rows_never_raise() -> None:
    for raw in (b"", b"not json", b"[1, [2, 3], {}]", b'{"inputs": 5}', b'{"x": 1}'):
        assert isinstance(AUTO.request_rows(raw), list)
    assert AUTO.request_rows(b"not json") == []
