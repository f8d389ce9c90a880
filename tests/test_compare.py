"""Row agreement, contract differences and row-count errors between two parsed answers."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from analysis.adapters import select_adapter
from analysis.adapters.base import ParsedOutput
from analysis.compare import CONTRACT_KINDS, Comparison, compare_outputs
from common.settings import OutputSettings

BODIES = Path(__file__).parent / "fixtures" / "bodies"
OUT = OutputSettings()
AUTO = select_adapter(OUT)


def parsed(name: str, request: bytes = b"{}") -> ParsedOutput:
    return AUTO.parse(request, (BODIES / name).read_bytes())


def parsed_json(answer: object) -> ParsedOutput:
    return AUTO.parse(b"{}", orjson.dumps(answer))


def compare_files(primary: str, candidate: str) -> Comparison:
    return compare_outputs(parsed(primary), parsed(candidate), OUT)


def kinds(comparison: object) -> list[str]:
    return sorted(d.kind for d in comparison.contract_diffs)  # type: ignore[attr-defined]


def test_renamed_output_tensor_is_a_contract_diff_and_rows_still_compare() -> None:
    cmp = compare_files("oip_v2_triton_multi.json", "oip_v2_triton_multi_renamed.json")
    assert cmp.error is None
    assert kinds(cmp) == ["output_names"]
    assert "probabilities" in cmp.contract_diffs[0].detail
    assert "class_probs" in cmp.contract_diffs[0].detail
    assert [r.agree for r in cmp.rows] == [True, True, False, True]
    assert cmp.rows[2].conf_delta == pytest.approx(0.52 - 0.55)
    assert set(kinds(cmp)) <= set(CONTRACT_KINDS)


def test_datatype_and_shape_changes() -> None:
    base = {"name": "probabilities", "shape": [2, 2], "datatype": "FP32", "data": [0.1, 0.9] * 2}
    changed = {**base, "datatype": "FP64", "shape": [2, 3], "data": [0.1, 0.8, 0.1] * 2}
    cmp = compare_outputs(
        parsed_json({"outputs": [base]}), parsed_json({"outputs": [changed]}), OUT
    )
    assert kinds(cmp) == ["datatype", "shape"]
    shape = next(d for d in cmp.contract_diffs if d.kind == "shape")
    assert shape.detail == "probabilities: [2] -> [3]"


def test_protocol_change_is_reported_but_rows_compare() -> None:
    cmp = compare_files("tfserving_estimator.json", "oip_v2_mlserver_sklearn.json")
    assert "protocol" in kinds(cmp)
    assert "output_names" not in kinds(cmp)  # names are only compared within one protocol
    assert len(cmp.rows) == 3


def test_row_count_mismatch_is_an_error_not_a_guess() -> None:
    primary = parsed("kserve_v1_sklearn_labels.json")
    candidate = parsed_json({"predictions": [0, 1]})
    cmp = compare_outputs(primary, candidate, OUT)
    assert cmp.rows == []
    assert cmp.error == "row_count_mismatch: primary 3 rows, candidate 2"


def test_label_set_difference() -> None:
    cmp = compare_files("tfserving_estimator.json", "tfserving_softmax.json")
    # The candidate answers with class indices where the primary names its classes.
    assert kinds(cmp) == ["label_set", "output_names"]
    renamed = {
        "predictions": [
            {"classes": ["setosa", "versicolour", "virginica"], "scores": [0.9, 0.05, 0.05]}
        ]
        * 3
    }
    cmp = compare_outputs(parsed("tfserving_estimator.json"), parsed_json(renamed), OUT)
    (diff,) = [d for d in cmp.contract_diffs if d.kind == "label_set"]
    assert "versicolor" in diff.detail and "versicolour" in diff.detail


def test_candidate_predicting_outside_the_primarys_classes() -> None:
    candidate = parsed_json({"predictions": ["setosa", "versicolor", "unknown"]})
    cmp = compare_outputs(parsed("tfserving_estimator.json"), candidate, OUT)
    assert "label_set" in kinds(cmp)
    assert "missing_field" in kinds(cmp)  # no probabilities on the candidate's side
    assert [r.agree for r in cmp.rows] == [True, True, False]
    assert cmp.rows[0].conf_delta is None


def test_kind_change() -> None:
    cmp = compare_files("kserve_v1_sklearn_labels.json", "kserve_v1_regression.json")
    assert "kind" in kinds(cmp)
    assert not any(r.agree for r in cmp.rows)


def test_regression_tolerance_and_diffs() -> None:
    primary = parsed_json({"predictions": [100.0, 10.0, 0.0]})
    candidate = parsed_json({"predictions": [100.9, 10.25, 0.05]})
    cmp = compare_outputs(primary, candidate, OutputSettings(atol=0.0, rtol=0.01))
    assert [r.agree for r in cmp.rows] == [True, False, False]
    assert cmp.rows[0].diff == pytest.approx(0.9)
    assert cmp.rows[1].abs_diff == pytest.approx(0.25)
    loose = compare_outputs(primary, candidate, OutputSettings(atol=0.1, rtol=0.01))
    assert [r.agree for r in loose.rows] == [True, False, True]


def test_regression_vectors_compare_every_element() -> None:
    primary = parsed_json({"predictions": [[1.0, 2.0], [3.0, 4.0]]})
    candidate = parsed_json({"predictions": [[1.0, 2.5], [3.0, 4.0]]})
    cmp = compare_outputs(primary, candidate, OutputSettings(rtol=0.0))
    assert [r.agree for r in cmp.rows] == [False, True]
    assert cmp.rows[0].diff == 0.0
    assert cmp.rows[0].abs_diff == pytest.approx(0.5)


def test_text_agreement_normalises_whitespace_and_reports_missing_logprobs() -> None:
    cmp = compare_files("openai_chat_logprobs.json", "openai_chat_plain.json")
    assert [r.agree for r in cmp.rows] == [True]
    (diff,) = cmp.contract_diffs
    assert diff.kind == "missing_field" and diff.detail.startswith("confidence")
    other = compare_files("openai_chat_plain.json", "openai_chat_n2.json")
    assert other.error == "row_count_mismatch: primary 1 rows, candidate 2"


def test_synthetic_candidate_skips_protocol_noise_but_keeps_label_sets() -> None:
    onnx_answer = {
        "parameters": {"generator": "shadowtrial-onnx"},
        "outputs": [
            {"name": "label", "shape": [3], "datatype": "INT64", "data": [0, 1, 2]},
            {
                "name": "probabilities",
                "shape": [3, 3],
                "datatype": "FP32",
                "parameters": {"classes": ["0", "1", "2"]},
                "data": [0.9, 0.05, 0.05, 0.1, 0.8, 0.1, 0.1, 0.1, 0.8],
            },
        ],
    }
    candidate = parsed_json(onnx_answer)
    assert candidate.synthetic
    cmp = compare_outputs(parsed("tfserving_estimator.json"), candidate, OUT)
    assert kinds(cmp) == ["label_set"]  # setosa/... vs 0/1/2: a real finding
    same = compare_outputs(parsed("oip_v2_mlserver_sklearn.json"), candidate, OUT)
    assert kinds(same) == []  # other tensor names and FP64 vs FP32 are ours, not the model's
    assert all(r.agree for r in same.rows)
