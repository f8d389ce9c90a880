"""An ONNX candidate: request bodies in, OIP v2 answer bodies out, via onnxruntime.

Shared by the proxy (`run = "proxy"`: in-process on a thread pool) and the comparison
worker (`run = "worker"`: vectorised batches read from the pair stream), so it lives in
`common` and imports neither package.

- Loading checks everything that can be checked before traffic arrives: the file exists,
  is ONNX, and its inputs can be fed from the configured `input` adapter (`oip-v2`
  tensors by name, `instances` rows, `mlflow-split` columns in `columns` order).
  Failures raise ModelLoadError with one clear sentence.
- `predict_bodies` parses every body, concatenates the rows of the good ones into one
  `session.run`, and splits the outputs back per request. A body that cannot feed the
  model (not JSON, wrong width, strings, NaN) is a per-request CandidateError; if the
  batched run fails, each request is run alone so one bad request never fails the others.
- Answers are OIP v2: classifiers give a `label` tensor and a `probabilities` tensor with
  the class names in its parameters (ZipMap on or off), regressors a `predictions` tensor.
  The top-level `parameters.generator` marks them as ours (see analysis.adapters.oip_v2).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

from common.errors import CandidateError, ModelLoadError
from common.oip_binary import BinaryTensorError, load_body
from common.settings import CandidateSettings

GENERATOR = "shadowtrial-onnx"  # == analysis.adapters.oip_v2.SYNTHETIC_GENERATOR
OUTCOME_ERROR = "error"  # == common.records.OUTCOME_ERROR

_DTYPES: dict[str, tuple[Any, str]] = {
    "tensor(float)": (np.float32, "float"),
    "tensor(double)": (np.float64, "float"),
    "tensor(float16)": (np.float16, "float"),
    "tensor(int64)": (np.int64, "int"),
    "tensor(int32)": (np.int32, "int"),
    "tensor(bool)": (np.bool_, "bool"),
    "tensor(string)": (np.object_, "str"),
}
_LABEL_TYPES = ("tensor(int64)", "tensor(string)", "tensor(int32)")
_OIP_TYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int64": "INT64"}


class _BadInput(Exception):
    """A request that cannot feed the model (becomes CandidateError("error", ...))."""


@dataclass(frozen=True)
class ModelInput:
    """One model input: its name, element type and the dims after the batch dim."""

    name: str
    dtype: Any
    kind: str  # float | int | bool | str
    dims: tuple[int | None, ...]  # None: a dynamic dim
    batch: int | None = None  # a batch size fixed by the model (None: any)

    @property
    def is_column(self) -> bool:
        """One value per row: shape [N] or [N, 1] (per-column inputs of a pipeline)."""
        return self.dims in ((), (1,))


@dataclass(frozen=True)
class OutputPlan:
    """Which session outputs hold the label, the probabilities or the regression values."""

    kind: str  # classification | regression
    label: int | None = None
    proba: int | None = None
    zipmap: bool = False
    score: int | None = None


# -- loading ----------------------------------------------------------------------------------


def _session(path: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    # Idle intra-op threads must sleep, not spin: they share 2 cores with the primary path.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind11 types: translate them all
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path}: not a loadable ONNX model ({first[:300]})") from None


def _model_input(arg: Any) -> ModelInput:
    if arg.type not in _DTYPES:
        raise ModelLoadError(
            f"model input {arg.name!r} has type {arg.type}, which no adapter feeds"
        )
    shape = list(arg.shape or [])
    if not shape:
        raise ModelLoadError(f"model input {arg.name!r} is a scalar; expected a batch dimension")
    dtype, kind = _DTYPES[arg.type]
    dims = tuple(d if isinstance(d, int) and d > 0 else None for d in shape[1:])
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return ModelInput(arg.name, dtype, kind, dims, batch)


def _output_plan(outputs: Sequence[Any]) -> OutputPlan:
    types = [o.type for o in outputs]
    zipmap = next((i for i, t in enumerate(types) if t.startswith("seq(map(")), None)
    labels = [
        i for i, o in enumerate(outputs) if o.type in _LABEL_TYPES and len(o.shape or []) <= 1
    ]
    floats = [i for i, t in enumerate(types) if t in ("tensor(float)", "tensor(double)")]
    label = labels[0] if labels else None
    if zipmap is not None:
        return OutputPlan("classification", label=label, proba=zipmap, zipmap=True)
    if label is not None:
        return OutputPlan("classification", label=label, proba=floats[0] if floats else None)
    if floats:
        return OutputPlan("regression", score=floats[0])
    raise ModelLoadError(f"model outputs {types} hold no label, probabilities or numbers")


def _graph_classes(path: str) -> tuple[str, ...] | None:
    """Class names from the classifier node (skl2onnx `classlabels_*`), if `onnx` is there."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # the session loaded it; names are a nicety, not a requirement
        return None
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name.startswith("classlabels_") and (attr.ints or attr.strings):
                values = list(attr.ints) or [s.decode("utf-8", "replace") for s in attr.strings]
                return tuple(str(v) for v in values)
    return None


def _check_adapter(cand: CandidateSettings, inputs: list[ModelInput]) -> None:
    """Fail at start when the configured input adapter cannot feed these inputs."""
    if cand.input == "oip-v2":
        return
    names = [i.name for i in inputs]
    if len(inputs) > 1:
        if not all(i.is_column for i in inputs):
            raise ModelLoadError(
                f"model has several inputs {names}, not all one value per row; "
                f"input = {cand.input!r} can only feed per-column inputs (use oip-v2)"
            )
        missing = [n for n in names if cand.columns and n not in cand.columns]
        if missing:
            raise ModelLoadError(f"columns {list(cand.columns)} lack model inputs {missing}")
        return
    width = _width(inputs[0])
    if cand.input == "mlflow-split" and not cand.columns:
        raise ModelLoadError("input = 'mlflow-split' needs `columns` (the model's column order)")
    if cand.columns and width is not None and len(cand.columns) != width:
        raise ModelLoadError(
            f"model input {names[0]!r} takes {width} features but `columns` names "
            f"{len(cand.columns)}: {list(cand.columns)[:10]}"
        )


def _width(inp: ModelInput) -> int | None:
    if len(inp.dims) == 1:
        return inp.dims[0]
    return 1 if not inp.dims else None


class OnnxModel:
    """One onnxruntime session and the plumbing from request bodies to answer bodies."""

    def __init__(
        self,
        cand: CandidateSettings,
        session: ort.InferenceSession,
        classes: tuple[str, ...] | None,
    ) -> None:
        self.name = cand.name
        self.input_adapter = cand.input
        self.columns = tuple(cand.columns)
        self.session = session
        self.inputs = [_model_input(a) for a in session.get_inputs()]
        outputs = session.get_outputs()
        self.output_names = [o.name for o in outputs]
        self.plan = _output_plan(outputs)
        self.classes = classes if self.plan.kind == "classification" else None
        # A model exported with a fixed batch size cannot take concatenated requests.
        self.batchable = all(i.batch is None for i in self.inputs)
        _check_adapter(cand, self.inputs)
        self._feeder = _FEEDERS[cand.input]

    @classmethod
    def load(cls, cand: CandidateSettings) -> OnnxModel:
        """Load `cand.onnx`; ModelLoadError if missing, not ONNX, or not feedable."""
        path = cand.onnx or ""
        if not path or not os.path.isfile(path):
            raise ModelLoadError(f"candidate {cand.name!r}: ONNX file {path!r} not found")
        session = _session(path, cand.threads)
        try:
            return cls(cand, session, _graph_classes(path))
        except ModelLoadError as exc:
            raise ModelLoadError(f"candidate {cand.name!r} ({path}): {exc.detail}") from None

    # -- prediction ---------------------------------------------------------------------------

    def predict_body(self, body: bytes) -> bytes | CandidateError:
        """One request body -> one answer body (or the reason it failed)."""
        return self.predict_bodies([body])[0]

    def predict_bodies(self, bodies: Sequence[bytes]) -> list[bytes | CandidateError]:
        """Answer many request bodies with as few `session.run` calls as possible."""
        results: list[bytes | CandidateError | None] = [None] * len(bodies)
        ready: list[tuple[int, dict[str, np.ndarray], int]] = []
        for i, body in enumerate(bodies):
            try:
                feeds, n = self._feeds(body)
                ready.append((i, feeds, n))
            except _BadInput as exc:
                results[i] = CandidateError(OUTCOME_ERROR, str(exc))
        if len(ready) > 1 and self.batchable:
            self._run_batch(ready, results)
        for i, feeds, n in ready:
            if results[i] is None:
                results[i] = self._run_one(feeds, n)
        return [r if r is not None else CandidateError(OUTCOME_ERROR, "no result") for r in results]

    def _feeds(self, body: bytes) -> tuple[dict[str, np.ndarray], int]:
        try:
            doc = load_body(body)
        except BinaryTensorError as exc:
            raise _BadInput(f"request binary tensor data: {exc}") from None
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise _BadInput(f"request body is not JSON: {exc}") from None
        if not isinstance(doc, dict | list):
            raise _BadInput("request body is not a JSON object")
        feeds = self._feeder(self, doc)
        counts = {len(a) for a in feeds.values()}
        if len(counts) != 1:
            raise _BadInput(f"model inputs disagree on the row count {sorted(counts)}")
        n = counts.pop()
        if n == 0:
            raise _BadInput("the request has no rows")
        return feeds, n

    def _run_batch(
        self,
        ready: list[tuple[int, dict[str, np.ndarray], int]],
        results: list[bytes | CandidateError | None],
    ) -> None:
        try:
            feeds = {
                inp.name: np.concatenate([f[inp.name] for _, f, _ in ready]) for inp in self.inputs
            }
            outputs = self.session.run(self.output_names, feeds)
        except Exception:  # a bad request among many: each is retried alone by the caller
            return
        start = 0
        for i, _, n in ready:
            results[i] = self._answer(outputs, start, start + n)
            start += n

    def _run_one(self, feeds: dict[str, np.ndarray], n: int) -> bytes | CandidateError:
        try:
            outputs = self.session.run(self.output_names, feeds)
        except Exception as exc:  # onnxruntime's own error types: translate at the boundary
            text = " ".join(str(exc).split()) or type(exc).__name__
            return CandidateError(OUTCOME_ERROR, f"onnxruntime: {text[:300]}")
        return self._answer(outputs, 0, n)

    def _answer(self, outputs: list[Any], start: int, stop: int) -> bytes:
        plan = self.plan
        tensors: list[dict[str, Any]] = []
        if plan.kind == "regression" and plan.score is not None:
            tensors.append(_tensor("predictions", np.asarray(outputs[plan.score][start:stop])))
        if plan.label is not None:
            tensors.append(_label_tensor(np.asarray(outputs[plan.label][start:stop])))
        if plan.proba is not None:
            probs, classes = self._probs(outputs[plan.proba][start:stop])
            tensor = _tensor("probabilities", probs)
            if classes:
                tensor["parameters"] = {"classes": list(classes)}
            tensors.append(tensor)
        answer = {
            "model_name": self.name,
            "model_version": "onnx",
            "parameters": {"generator": GENERATOR},
            "outputs": tensors,
        }
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)

    def _probs(self, values: Any) -> tuple[np.ndarray, tuple[str, ...] | None]:
        if not self.plan.zipmap:
            return np.asarray(values, dtype=np.float32), self.classes
        keys = list(values[0].keys()) if len(values) else []
        matrix = np.array([[row[k] for k in keys] for row in values], dtype=np.float32)
        return matrix.reshape(len(values), len(keys)), tuple(str(k) for k in keys)


def _tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    datatype = _OIP_TYPES.get(str(array.dtype), "FP32")
    if datatype == "FP32" and array.dtype != np.float32:
        array = array.astype(np.float32)
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "data": np.ascontiguousarray(array).ravel(),
    }


def _label_tensor(array: np.ndarray) -> dict[str, Any]:
    if array.dtype.kind in "iu":
        datatype, data = "INT64", array.astype(np.int64).ravel()
    else:
        datatype, data = "BYTES", [str(v) for v in array.ravel().tolist()]
    return {"name": "label", "shape": list(array.shape), "datatype": datatype, "data": data}


# -- request bodies -> input arrays -------------------------------------------------------------


def _array(values: object, inp: ModelInput, where: str) -> np.ndarray:
    """Python values -> an array of the input's type, rejecting what the model cannot take."""
    try:
        raw = np.asarray(values, dtype=object if inp.kind == "str" else None)
    except (ValueError, TypeError) as exc:
        raise _BadInput(f"{where}: rows of unequal length ({str(exc)[:120]})") from None
    if inp.kind == "str":
        if not all(isinstance(v, str) for v in raw.ravel()):
            raise _BadInput(f"{where}: expected strings for input {inp.name!r}")
        return raw
    if raw.dtype.kind not in "biuf":
        raise _BadInput(f"{where}: non-numeric values (strings or nulls) for input {inp.name!r}")
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise _BadInput(f"{where}: NaN or infinite value for input {inp.name!r}")
    with np.errstate(over="ignore", invalid="ignore"):  # checked right below instead
        cast = raw.astype(inp.dtype, copy=False)
    if inp.kind == "float" and not np.isfinite(cast).all():
        raise _BadInput(f"{where}: a value beyond {cast.dtype} range for input {inp.name!r}")
    if inp.kind == "int" and not np.array_equal(cast, raw):
        raise _BadInput(f"{where}: fractional or out-of-range values for input {inp.name!r}")
    return cast


def _fit(array: np.ndarray, inp: ModelInput, where: str) -> np.ndarray:
    """Check and shape a batch against the input's per-row dims."""
    if inp.is_column and array.ndim in (1, 2) and array.size == len(array):
        return array.reshape((len(array), *((1,) if inp.dims else ())))
    got = tuple(array.shape[1:])
    fits = len(got) == len(inp.dims) and all(
        d is None or d == g for d, g in zip(inp.dims, got, strict=True)
    )
    if array.ndim == 0 or not fits:
        want = [inp.batch or "N", *("?" if d is None else d for d in inp.dims)]
        raise _BadInput(
            f"{where}: input {inp.name!r} expects shape {want}, got {list(array.shape)}"
        )
    if inp.batch is not None and len(array) != inp.batch:
        raise _BadInput(f"{where}: the model takes exactly {inp.batch} row(s) per request")
    return array


def _feed_oip(model: OnnxModel, doc: object) -> dict[str, np.ndarray]:
    tensors = doc.get("inputs") if isinstance(doc, dict) else None
    if (
        not isinstance(tensors, list)
        or not all(isinstance(t, dict) for t in tensors)
        or not tensors
    ):
        raise _BadInput('expected an OIP v2 body: {"inputs": [{name, shape, datatype, data}]}')
    by_name = {str(t.get("name")): t for t in tensors}
    feeds = {}
    for inp in model.inputs:
        tensor = by_name.get(inp.name)
        if tensor is None and len(model.inputs) == 1 and len(tensors) == 1:
            tensor = tensors[0]  # one input, one tensor: names need not match ("input-0")
        if tensor is None:
            raise _BadInput(
                f"model input {inp.name!r} not among request tensors {sorted(by_name)[:10]}"
            )
        feeds[inp.name] = _fit(_oip_array(tensor, inp), inp, f"tensor {inp.name!r}")
    return feeds


def _oip_array(tensor: dict[str, Any], inp: ModelInput) -> np.ndarray:
    shape = tensor.get("shape")
    array = _array(tensor.get("data"), inp, f"tensor {tensor.get('name')!r}")
    if not isinstance(shape, list) or not all(_is_size(d) for d in shape):
        raise _BadInput(f"tensor {tensor.get('name')!r}: shape must be a list of sizes")
    if math.prod(shape) != array.size:
        raise _BadInput(
            f"tensor {tensor.get('name')!r}: {array.size} values do not fit shape {shape}"
        )
    return array.reshape(shape)


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _feed_instances(model: OnnxModel, doc: object) -> dict[str, np.ndarray]:
    rows = doc
    if isinstance(doc, dict):
        rows = doc.get("instances", doc.get("inputs"))
    if not isinstance(rows, list):
        raise _BadInput('expected {"instances": [...]} with one entry per row')
    if rows and all(isinstance(r, dict) for r in rows):
        return _feed_columns(model, _records_columns(rows))
    return _feed_matrix(model, rows)


def _feed_split(model: OnnxModel, doc: object) -> dict[str, np.ndarray]:
    if isinstance(doc, dict) and isinstance(doc.get("dataframe_records"), list):
        records = doc["dataframe_records"]
        if not all(isinstance(r, dict) for r in records):
            raise _BadInput("dataframe_records must be a list of objects")
        return _feed_columns(model, _records_columns(records))
    split = doc.get("dataframe_split") if isinstance(doc, dict) else None
    if not isinstance(split, dict) or not isinstance(split.get("data"), list):
        raise _BadInput('expected {"dataframe_split": {"columns": [...], "data": [[...]]}}')
    columns, data = split.get("columns"), split["data"]
    if not isinstance(columns, list) or not all(isinstance(r, list) for r in data):
        raise _BadInput("dataframe_split needs `columns` and `data` rows as lists")
    if [str(c) for c in columns] == list(model.columns) and len(model.inputs) == 1:
        return _feed_matrix(model, data)  # the common case: no reordering needed
    index = {str(c): i for i, c in enumerate(columns)}
    table: dict[str, list[object]] = {}
    for name in _needed_columns(model):
        if name not in index:
            raise _BadInput(f"column {name!r} missing from the request's columns {columns[:10]}")
        i = index[name]
        table[name] = [row[i] if i < len(row) else None for row in data]
    return _feed_columns(model, table)


def _records_columns(records: list[dict[str, object]]) -> dict[str, list[object]]:
    keys = {k for r in records for k in r}
    return {k: [r.get(k) for r in records] for k in keys}


def _needed_columns(model: OnnxModel) -> list[str]:
    if len(model.inputs) > 1:
        return [i.name for i in model.inputs]
    return list(model.columns)


def _feed_columns(model: OnnxModel, table: dict[str, list[object]]) -> dict[str, np.ndarray]:
    if len(model.inputs) > 1:
        feeds = {}
        for inp in model.inputs:
            if inp.name not in table:
                raise _BadInput(f"column {inp.name!r} missing from the request")
            feeds[inp.name] = _fit(
                _array(table[inp.name], inp, f"column {inp.name!r}"), inp, "rows"
            )
        return feeds
    if not model.columns:
        raise _BadInput("rows are objects but the candidate has no `columns` order")
    missing = [c for c in model.columns if c not in table]
    if missing:
        raise _BadInput(f"columns {missing[:10]} missing from the request")
    n = len(table[model.columns[0]])
    matrix = [[table[c][r] for c in model.columns] for r in range(n)]
    return _feed_matrix(model, matrix)


def _feed_matrix(model: OnnxModel, rows: list[object]) -> dict[str, np.ndarray]:
    if not rows:
        raise _BadInput("the request has no rows")
    if len(model.inputs) != 1:
        raise _BadInput(f"rows as lists cannot feed the model's {len(model.inputs)} inputs")
    inp = model.inputs[0]
    return {inp.name: _fit(_array(rows, inp, "rows"), inp, "rows")}


_FEEDERS: dict[str, Callable[[OnnxModel, object], dict[str, np.ndarray]]] = {
    "oip-v2": _feed_oip,
    "instances": _feed_instances,
    "mlflow-split": _feed_split,
}
