"""KServe v1 / TensorFlow Serving REST: `instances` or `inputs` in, `predictions` out.

`predictions` is one entry per row: a label (string, integer, bool), a float (regression,
or P(positive) when two class names are configured), a list of floats (class
probabilities when they form a distribution or match the configured classes, else a
regression vector), or a dict of named outputs (TF's `{"classes": [...], "scores": [...]}`,
a DataFrame record from MLflow, a ZipMap `{class: p}`). The row-format lifter here is
shared with the MLflow adapter. JSON keeps ints and floats apart, and that is what tells a
label from a score.
"""

from __future__ import annotations

from collections.abc import Callable

from analysis.adapters.base import (
    KIND_CLASSIFICATION,
    KIND_REGRESSION,
    ContractField,
    ParsedOutput,
    Prediction,
    UnparseableOutput,
    from_probs,
    from_scores,
    is_label_like,
    is_number,
    json_type,
    label_text,
    load_json,
    looks_like_probs,
    map_label,
    number_list,
)
from analysis.adapters.rows import RequestRows
from common.settings import OutputSettings

Classes = tuple[str, ...] | None

_LABEL_KEYS = (
    "label", "labels", "predicted_label", "predicted_class", "class", "class_name",
    "output_label", "class_ids", "prediction", "predictions", "y_pred", "classes",
)  # fmt: skip
_PROBA_KEYS = (
    "probabilities", "probability", "probs", "proba", "predict_proba",
    "output_probability", "scores", "confidence_scores",
)  # fmt: skip
_SCORE_KEYS = (
    "score", "value", "prediction", "predictions", "predicted_value", "output", "outputs",
    "yhat", "y_pred", "regression",
)  # fmt: skip
_PROBA_PREFIXES = ("probability_", "proba_", "prob_")


class TfServingAdapter(RequestRows):
    """`{"predictions": [...]}` (row format) or `{"outputs": ...}` (columnar format)."""

    name = "tfserving"

    def __init__(self, outputs: OutputSettings) -> None:
        self.classes: Classes = outputs.classes or None

    def parse(self, request_body: bytes, response_body: bytes) -> ParsedOutput:
        """Lift a TF-Serving / KServe v1 answer."""
        return self.parse_json(load_json(response_body, "response"))

    def parse_json(self, doc: object) -> ParsedOutput:
        """Lift an already decoded answer."""
        if isinstance(doc, dict) and "predictions" in doc:
            return lift_predictions(doc["predictions"], self.classes, self.name)
        if isinstance(doc, dict) and "outputs" in doc:
            return lift_predictions(doc["outputs"], self.classes, self.name)
        raise UnparseableOutput(f"{self.name}: no `predictions` or `outputs` field{_error(doc)}")


def _error(doc: object) -> str:
    if isinstance(doc, dict) and "error" in doc:
        return f" (error body: {str(doc['error'])[:200]})"
    return ""


def lift_predictions(values: object, classes: Classes, protocol: str) -> ParsedOutput:
    """Per-row predictions (list, columnar dict or a single value) -> canonical form."""
    items = _as_rows(values)
    if not items:
        raise UnparseableOutput(f"{protocol}: no prediction rows")
    if all(isinstance(v, dict) for v in items):
        return _lift_dict_rows(items, classes, protocol)  # type: ignore[arg-type]
    lifter = _pick_lifter(items, classes)
    rows, kind = lifter(items, classes)
    shape = (len(items[0]),) if isinstance(items[0], list) else ()
    contract = (ContractField("predictions", json_type(items[0]), shape),)
    declared = _declared(rows, classes)
    return ParsedOutput(protocol, kind, tuple(rows), contract, declared)


def _as_rows(values: object) -> list[object]:
    if isinstance(values, list):
        return values
    if isinstance(values, dict):
        columns = list(values.values())
        if columns and all(isinstance(c, list) for c in columns):
            n = len(columns[0])
            if all(len(c) == n for c in columns):
                return [{k: v[i] for k, v in values.items()} for i in range(n)]
        return [values]
    return [] if values is None else [values]


Lifter = Callable[[list[object], Classes], tuple[list[Prediction], str]]


def _pick_lifter(items: list[object], classes: Classes) -> Lifter:
    if all(is_label_like(v) for v in items):
        return _lift_labels
    if all(is_number(v) for v in items):
        return _lift_scalars
    if all(number_list(v) is not None for v in items):
        return _lift_vectors
    raise UnparseableOutput("prediction rows are of mixed or unknown types")


def _lift_labels(items: list[object], classes: Classes) -> tuple[list[Prediction], str]:
    rows = [Prediction(label=map_label(label_text(v), v, classes)) for v in items]
    return rows, KIND_CLASSIFICATION


def _lift_scalars(items: list[object], classes: Classes) -> tuple[list[Prediction], str]:
    values = [float(v) for v in items]  # type: ignore[arg-type]
    if classes is not None and len(classes) == 2 and all(0.0 <= v <= 1.0 for v in values):
        return [from_probs([v], classes) for v in values], KIND_CLASSIFICATION
    return [from_scores([v]) for v in values], KIND_REGRESSION


def _lift_vectors(items: list[object], classes: Classes) -> tuple[list[Prediction], str]:
    vectors = [number_list(v) or [] for v in items]
    width_ok = classes is not None and all(len(v) in (len(classes), 1) for v in vectors)
    if (width_ok and len(classes or ()) >= 2) or looks_like_probs(vectors):
        return [from_probs(v, classes) for v in vectors], KIND_CLASSIFICATION
    return [from_scores(v) for v in vectors], KIND_REGRESSION


def _declared(rows: list[Prediction], classes: Classes) -> tuple[str, ...]:
    if classes:
        return classes
    named = next((r.classes for r in rows if r.classes), None)
    return named or ()


# -- rows that are dicts of named outputs ---------------------------------------------------


def _lift_dict_rows(
    items: list[dict[str, object]], classes: Classes, protocol: str
) -> ParsedOutput:
    lifted = [lift_dict_row(item, classes) for item in items]
    kinds = {kind for _, kind in lifted}
    if len(kinds) != 1:
        raise UnparseableOutput(f"{protocol}: rows mix classification and regression outputs")
    rows = [row for row, _ in lifted]
    first = items[0]
    contract = tuple(
        ContractField(str(k), json_type(v), (len(v),) if isinstance(v, list) else ())
        for k, v in first.items()
    )
    return ParsedOutput(protocol, kinds.pop(), tuple(rows), contract, _declared(rows, classes))


def lift_dict_row(item: dict[str, object], classes: Classes) -> tuple[Prediction, str]:
    """One dict of named outputs -> (prediction, kind); UnparseableOutput if none is known."""
    probs, names = _row_probs(item, classes)
    label_key = next((k for k in _LABEL_KEYS if k in item and is_label_like(item[k])), None)
    if probs is not None or label_key is not None:
        raw = item[label_key] if label_key else None
        label = map_label(label_text(raw), raw, names) if label_key else None
        if probs is None:
            return Prediction(label=label), KIND_CLASSIFICATION
        return from_probs(probs, names, label), KIND_CLASSIFICATION
    for key in _SCORE_KEYS:
        value = item.get(key)
        if is_number(value):
            return from_scores([float(value)]), KIND_REGRESSION  # type: ignore[arg-type]
        if number_list(value) is not None:
            return from_scores(number_list(value) or []), KIND_REGRESSION
    raise UnparseableOutput(f"no known prediction field among {sorted(item)[:10]}")


def _row_probs(item: dict[str, object], classes: Classes) -> tuple[list[float] | None, Classes]:
    """Class probabilities in a dict row, with the class names the row itself declares."""
    for key in _PROBA_KEYS:
        value = item.get(key)
        if isinstance(value, dict):
            return _zipmap(value, classes)
        probs = [float(value)] if is_number(value) else number_list(value)  # type: ignore[arg-type]
        if probs is not None:
            return probs, _row_classes(item, len(probs)) or classes
    prefixed = {k[len(p) :]: v for k, v in item.items() for p in _PROBA_PREFIXES if k.startswith(p)}
    if len(prefixed) >= 2 and all(is_number(v) for v in prefixed.values()):
        return _zipmap(prefixed, classes)
    if len(item) >= 2 and all(is_number(v) for v in item.values()):
        values = [float(v) for v in item.values()]  # type: ignore[arg-type]
        if looks_like_probs([values]):
            return _zipmap(item, classes)
    return None, classes


def _zipmap(mapping: dict[str, object], classes: Classes) -> tuple[list[float] | None, Classes]:
    values = [float(v) for v in mapping.values() if is_number(v)]  # type: ignore[arg-type]
    if len(values) != len(mapping) or not values:
        return None, classes
    return values, tuple(str(k) for k in mapping)


def _row_classes(item: dict[str, object], width: int) -> Classes:
    """TF classifiers send the class names per row: {"classes": [...], "scores": [...]}."""
    for key in ("classes", "class_names", "all_classes"):
        names = item.get(key)
        if isinstance(names, list) and len(names) == width and width >= 2:
            texts = [label_text(n) for n in names]
            if all(t is not None for t in texts):
                return tuple(t for t in texts if t is not None)
    return None
