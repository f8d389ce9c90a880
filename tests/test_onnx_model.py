"""OnnxModel: real onnxruntime on models converted from scikit-learn, every input adapter,
load errors, and bad requests isolated inside a batch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson
import pytest
from fixtures.onnx_models import IRIS_COLUMNS, TrialModel, build_models, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.adapters import select_adapter
from analysis.adapters.base import KIND_CLASSIFICATION, KIND_REGRESSION, ParsedOutput
from common.errors import CandidateError, ModelLoadError
from common.settings import CandidateSettings, OutputSettings
from models.onnx_model import OnnxModel

OIP = select_adapter(OutputSettings(protocol="oip-v2"))


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrialModel]:
    return build_models(tmp_path_factory.mktemp("onnx"))


def load(model: TrialModel | Path, **settings: object) -> OnnxModel:
    path = model.path if isinstance(model, TrialModel) else model
    return OnnxModel.load(CandidateSettings(name="cand", onnx=str(path), **settings))  # type: ignore[arg-type]


def oip_body(rows: np.ndarray) -> bytes:
    tensor = {
        "name": "input-0",
        "shape": list(rows.shape),
        "datatype": "FP32",
        "data": rows.ravel(),
    }
    return orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)


def parse(answer: bytes | CandidateError) -> ParsedOutput:
    assert isinstance(answer, bytes), answer
    return OIP.parse(b"", answer)


def assert_matches_sklearn(parsed: ParsedOutput, model: TrialModel, rows: np.ndarray) -> None:
    expected = model.estimator.predict_proba(rows)
    got = np.array([r.probs for r in parsed.rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [r.label for r in parsed.rows] == [str(v) for v in model.estimator.predict(rows)]


@pytest.mark.parametrize(
    "name", ["iris_zipmap", "iris_nozipmap", "iris_names_zipmap", "cancer_nozipmap"]
)
def test_classifier_probabilities_equal_sklearn_across_a_batch(
    models: dict[str, TrialModel], name: str
) -> None:
    model = models[name]
    onnx = load(model)
    slices = [model.X[0:1], model.X[1:6], model.X[40:120], model.X[-3:]]
    answers = onnx.predict_bodies([oip_body(rows) for rows in slices])
    for rows, answer in zip(slices, answers, strict=True):
        parsed = parse(answer)
        assert parsed.kind == KIND_CLASSIFICATION and parsed.synthetic
        assert_matches_sklearn(parsed, model, rows)
        classes = tuple(str(c) for c in model.estimator.classes_)
        assert parsed.labels == classes
        assert parsed.rows[0].classes == classes


def test_regressor_predictions_equal_sklearn(models: dict[str, TrialModel]) -> None:
    model = models["diabetes_ridge"]
    rows = model.X[:50]
    parsed = parse(load(model).predict_body(oip_body(rows)))
    assert parsed.kind == KIND_REGRESSION
    np.testing.assert_allclose(
        [r.score for r in parsed.rows], model.estimator.predict(rows), rtol=1e-5
    )


def test_instances_and_mlflow_inputs_give_the_same_answer_as_oip(
    models: dict[str, TrialModel],
) -> None:
    model = models["iris_nozipmap"]
    rows = model.X[45:55]
    reference = parse(load(model).predict_body(oip_body(rows)))
    columns = model.columns
    records = [dict(zip(columns, r, strict=True)) for r in rows.tolist()]
    reordered = list(reversed(columns))
    bodies = {
        "instances-lists": ("instances", (), {"instances": rows.tolist()}),
        "instances-dicts": ("instances", columns, {"instances": records}),
        "split": (
            "mlflow-split",
            columns,
            {"dataframe_split": {"columns": list(columns), "data": rows.tolist()}},
        ),
        "split-reordered": (
            "mlflow-split",
            columns,
            {
                "dataframe_split": {
                    "columns": reordered,
                    "data": [[rec[c] for c in reordered] for rec in records],
                }
            },
        ),
        "records": ("mlflow-split", columns, {"dataframe_records": records}),
    }
    for label, (adapter, cols, body) in bodies.items():
        onnx = load(model, input=adapter, columns=cols)
        parsed = parse(onnx.predict_body(orjson.dumps(body)))
        assert [r.probs for r in parsed.rows] == [r.probs for r in reference.rows], label


def test_one_input_per_column(models: dict[str, TrialModel]) -> None:
    model = models["iris_columns"]
    frame = model.X.iloc[[0, 60, 120]]
    records = frame.to_dict(orient="records")
    split = {"columns": list(frame.columns), "data": frame.values.tolist()}
    tensors = [
        {
            "name": c,
            "shape": [3, 1],
            "datatype": "BYTES" if c == "size" else "FP32",
            "data": frame[c].tolist(),
        }
        for c in frame.columns
    ]
    cases = [
        ("mlflow-split", {"dataframe_records": records}),
        ("mlflow-split", {"dataframe_split": split}),
        ("instances", {"instances": records}),
        ("oip-v2", {"inputs": tensors}),
    ]
    for adapter, body in cases:
        onnx = load(model, input=adapter, columns=model.columns)
        assert_matches_sklearn(parse(onnx.predict_body(orjson.dumps(body))), model, frame)
    bad = [{**records[0], "size": 5}]
    (answer,) = load(model, input="instances").predict_bodies([orjson.dumps({"instances": bad})])
    assert isinstance(answer, CandidateError) and "expected strings" in answer.detail


def test_per_column_model_needs_per_column_adapter_columns(models: dict[str, TrialModel]) -> None:
    with pytest.raises(ModelLoadError, match="lack model inputs"):
        load(models["iris_columns"], input="mlflow-split", columns=("sepal_length", "size"))


def test_bad_requests_fail_alone_and_the_rest_of_the_batch_succeeds(
    models: dict[str, TrialModel],
) -> None:
    model = models["iris_zipmap"]
    onnx = load(model)
    good = model.X[100:103]
    nan_rows = {
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, None, 3, 4]}]
    }
    strings = {
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ["a", 2, 3, 4]}]
    }
    bodies = [
        oip_body(good),
        oip_body(model.X[:2, :3]),  # wrong width
        orjson.dumps(strings),
        orjson.dumps(nan_rows),
        b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [NaN, 1, 2, 3]}]}',
        b"<html>not json</html>",
        b'{"instances": [[1, 2, 3, 4]]}',  # another protocol
        oip_body(model.X[7:8]),
    ]
    answers = onnx.predict_bodies(bodies)
    assert_matches_sklearn(parse(answers[0]), model, good)
    assert_matches_sklearn(parse(answers[-1]), model, model.X[7:8])
    errors = answers[1:-1]
    assert all(isinstance(e, CandidateError) and e.outcome == "error" for e in errors)
    details = [e.detail for e in errors]  # type: ignore[union-attr]
    assert "expects shape ['N', 4], got [2, 3]" in details[0]
    assert "non-numeric" in details[1]
    assert "non-numeric" in details[2]  # null: no silent NaN
    assert "not JSON" in details[3] and "not JSON" in details[4]
    assert "OIP v2" in details[5]


def test_instances_errors(models: dict[str, TrialModel]) -> None:
    model = models["cancer_nozipmap"]
    onnx = load(model, input="instances")
    answers = onnx.predict_bodies(
        [
            orjson.dumps({"instances": [[1.0] * 30, [2.0] * 29]}),  # ragged
            orjson.dumps({"instances": [{"a": 1}]}),  # dicts without a column order
            orjson.dumps({"instances": []}),
            orjson.dumps({"instances": model.X[:2].tolist()}),
        ]
    )
    assert "unequal length" in answers[0].detail  # type: ignore[union-attr]
    assert "columns" in answers[1].detail  # type: ignore[union-attr]
    assert "no rows" in answers[2].detail  # type: ignore[union-attr]
    assert_matches_sklearn(parse(answers[3]), model, model.X[:2])


def test_values_beyond_float32_are_rejected(models: dict[str, TrialModel]) -> None:
    onnx = load(models["iris_nozipmap"], input="instances")
    (answer,) = onnx.predict_bodies([b'{"instances": [[1e308, 1, 1, 1]]}'])
    assert isinstance(answer, CandidateError) and "beyond float32 range" in answer.detail


def test_mlflow_missing_column_is_a_request_error(models: dict[str, TrialModel]) -> None:
    model = models["iris_nozipmap"]
    onnx = load(model, input="mlflow-split", columns=model.columns)
    body = {"dataframe_split": {"columns": list(model.columns[:3]), "data": [[1, 2, 3]]}}
    (answer,) = onnx.predict_bodies([orjson.dumps(body)])
    assert isinstance(answer, CandidateError)
    assert "petal_width" in answer.detail


def test_a_failed_batch_falls_back_to_one_run_per_request(tmp_path: Path) -> None:
    onnx = load(tiny_model(tmp_path, "sum_dynamic_width"))
    assert onnx.plan.kind == "regression" and onnx.batchable
    # Widths 2 and 3 cannot be concatenated into one batch: each runs alone.
    answers = onnx.predict_bodies(
        [oip_body(np.array([[1, 2]], np.float32)), oip_body(np.array([[1, 2, 3]], np.float32))]
    )
    assert [parse(a).rows[0].score for a in answers] == [3.0, 6.0]


def test_fixed_batch_model_runs_each_request_alone(tmp_path: Path) -> None:
    onnx = load(tiny_model(tmp_path, "sum_batch_one", batch=1))
    assert not onnx.batchable
    one = oip_body(np.array([[1, 1]], np.float32))
    two = oip_body(np.array([[1, 1], [2, 2]], np.float32))
    answers = onnx.predict_bodies([one, two, one])
    assert parse(answers[0]).rows[0].score == 2.0
    assert isinstance(answers[1], CandidateError)
    assert "exactly 1 row(s)" in answers[1].detail
    assert parse(answers[2]).rows[0].score == 2.0


# -- load errors ------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load(tmp_path / "nope.onnx")


def test_not_an_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"PK\x03\x04 this is a pickle, not ONNX")
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model") as info:
        load(path)
    assert info.value.outcome == "model_load"


def test_column_count_mismatch(models: dict[str, TrialModel]) -> None:
    model = models["cancer_nozipmap"]
    with pytest.raises(ModelLoadError, match="takes 30 features but `columns` names 3"):
        load(model, input="mlflow-split", columns=("a", "b", "c"))
    with pytest.raises(ModelLoadError, match="needs `columns`"):
        load(model, input="mlflow-split")
    with pytest.raises(ModelLoadError, match="takes 30 features"):
        load(model, input="instances", columns=("a",))


def test_answers_are_read_as_onnx_answers_under_any_protocol(
    models: dict[str, TrialModel],
) -> None:
    from analysis.adapters.oip_v2 import SYNTHETIC_GENERATOR
    from models.onnx_model import GENERATOR

    assert GENERATOR == SYNTHETIC_GENERATOR
    model = models["iris_names_zipmap"]
    answer = load(model).predict_body(oip_body(model.X[:2]))
    assert isinstance(answer, bytes)
    for protocol in ("mlflow", "tfserving", "openai"):
        parsed = select_adapter(OutputSettings(protocol=protocol)).parse(b"", answer)
        assert parsed.synthetic
        assert [r.label for r in parsed.rows] == list(model.estimator.predict(model.X[:2]))


# -- fuzz: no body makes predict_bodies raise ---------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=24,
)
_tensor = st.fixed_dictionaries(
    {"name": st.sampled_from(["X", "input-0", "size"]), "data": _values},
    optional={
        "shape": st.lists(st.integers(-1, 5) | st.booleans(), max_size=3),
        "datatype": st.just("FP32"),
    },
)
_wide = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**63), 2**63 - 1)
_bodies = st.one_of(
    st.builds(
        lambda v: {"instances": v},
        st.lists(st.lists(_wide, min_size=4, max_size=4), min_size=1, max_size=3),
    ),
    st.builds(lambda t: {"inputs": t}, st.lists(_tensor, max_size=3)),
    st.builds(lambda v: {"instances": v}, _values),
    st.builds(lambda c, d: {"dataframe_split": {"columns": c, "data": d}}, _values, _values),
    st.builds(lambda r: {"dataframe_records": r}, _values),
    _values,
)


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(bodies=st.lists(_bodies, min_size=1, max_size=4), raw=st.binary(max_size=16))
def test_no_body_makes_predict_bodies_raise(
    models: dict[str, TrialModel], bodies: list[object], raw: bytes
) -> None:
    encoded = [orjson.dumps(b) for b in bodies] + [raw]
    for name, adapter, columns in (
        ("iris_zipmap", "oip-v2", ()),
        ("iris_nozipmap", "instances", IRIS_COLUMNS),
        ("iris_columns", "mlflow-split", ()),
        ("iris_names_zipmap", "mlflow-split", IRIS_COLUMNS),
    ):
        onnx = _loaded(models, name, adapter, columns)
        answers = onnx.predict_bodies(encoded)
        assert len(answers) == len(encoded)
        assert all(isinstance(a, bytes | CandidateError) for a in answers)


_LOADED: dict[tuple[str, str], OnnxModel] = {}


def _loaded(
    models: dict[str, TrialModel], name: str, adapter: str, columns: tuple[str, ...]
) -> OnnxModel:
    key = (name, adapter)
    if key not in _LOADED:
        _LOADED[key] = load(models[name], input=adapter, columns=columns)
    return _LOADED[key]
