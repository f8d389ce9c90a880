"""The usual OIP v2 classification answer, lifted without the general path's detours.

Nearly every answer of a model has the same outputs: the same names, datatypes, per-row
shapes and declared classes. What the general path (analysis.adapters.oip_v2) decides
from those alone (which tensor holds labels, which probabilities, the contract) is
decided once per shape and kept in a `Plan`; an answer of a known shape then only has
its values checked and read. Whenever something in the values is unusual (nested data,
a label that is no label, a number that is no float, a shape the general path would
refuse or that depends on the values), `lift` returns None and the general path decides,
so both give the same result for every answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from analysis.adapters.base import (
    KIND_CLASSIFICATION,
    ContractField,
    ParsedOutput,
    Prediction,
    classified_row,
    from_probs,
    is_label_like,
    label_text,
    map_label,
    parsed_output,
    resolve_classes,
)
from analysis.adapters.rows import is_dim

LABEL_NAMES = {"label", "labels", "output_label", "predicted_label", "class", "classes", "predict"}
LABEL_TYPES = ("BYTES", "INT", "UINT", "BOOL")
FLOAT_TYPES = ("FP", "BF16")
PROB_HINTS = ("prob", "softmax")
SYNTHETIC_GENERATOR = "shadowtrial-onnx"  # `parameters.generator` of models.onnx_model answers
PLANS_MAX = 1024  # answer shapes remembered per adapter (a new model version adds a few)
_UNSEEN = object()

# One output's shape as the plan sees it: name, datatype, shape, declared classes.
Signature = tuple[tuple[str, str, tuple[int, ...], tuple[str, ...] | None], ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """What an answer of one shape means, decided once."""

    sizes: tuple[int, ...]  # values each output's flat `data` holds
    rows: int
    label: int  # index of the label tensor, -1 when there is none
    prob: int  # index of the probability tensor, -1 when there is none
    width: int  # probabilities per row
    classes: tuple[str, ...] | None  # class names of the probabilities (declared or configured)
    others: tuple[int, ...]  # the remaining outputs: only their size is checked
    contract: tuple[ContractField, ...]
    # The usual answer: one row, a label tensor and two or more probabilities (_one_row);
    # then the class names the row's probabilities take (None when they do not fit).
    one_row: bool = False
    row_classes: tuple[str, ...] | None = None


def class_names(params: dict[str, object]) -> tuple[str, ...] | None:
    """Class names an output's `parameters` declare (classes, class_names or labels)."""
    for key in ("classes", "class_names", "labels"):
        names = params.get(key)
        if isinstance(names, list) and names and all(is_label_like(n) for n in names):
            return tuple(label_text(n) or "" for n in names)
    return None


class FastOip:
    """Plans by answer shape and the lifting of answers whose shape has a plan."""

    def __init__(self, configured: tuple[str, ...] | None) -> None:
        self.configured = configured
        self._plans: dict[Signature, Plan | None] = {}

    def lift(self, doc: object) -> ParsedOutput | None:
        """The answer lifted, or None when the general path must decide."""
        if type(doc) is not dict:
            return None
        outputs = doc.get("outputs")
        if type(outputs) is not list or not outputs:
            return None
        found = _signature(outputs)
        if found is None:
            return None
        signature, datas = found
        plan = self._plan(signature)
        if plan is None or not _sizes_fit(plan, datas):
            return None
        rows = self._rows(plan, datas)
        if rows is None:
            return None
        params = doc.get("parameters")
        synthetic = isinstance(params, dict) and params.get("generator") == SYNTHETIC_GENERATOR
        return parsed_output(
            "oip-v2", KIND_CLASSIFICATION, rows, plan.contract, plan.classes or (), synthetic
        )

    def _plan(self, signature: Signature) -> Plan | None:
        plan = self._plans.get(signature, _UNSEEN)
        if plan is not _UNSEEN:
            return plan  # type: ignore[return-value]
        if len(self._plans) >= PLANS_MAX:
            self._plans.clear()
        plan = self._plans[signature] = make_plan(signature, self.configured)
        return plan

    def _rows(self, plan: Plan, datas: list[Any]) -> tuple[Prediction, ...] | None:
        if plan.one_row:
            return _one_row(plan, datas)
        labels = _labels(datas[plan.label], plan.classes) if plan.label >= 0 else None
        if plan.label >= 0 and labels is None:
            return None
        if plan.prob < 0:
            return tuple(Prediction(label=label) for label in labels or ())
        flat = datas[plan.prob]
        if not _finite_floats(flat):
            return None
        width, classes = plan.width, plan.classes
        if labels is None:
            labels = [None] * plan.rows
        if width < 2:  # one value per row is P(positive): from_probs widens it
            return tuple(
                [
                    from_probs(flat[i * width : (i + 1) * width], classes, labels[i])
                    for i in range(plan.rows)
                ]
            )
        if classes is not None and len(classes) != width:
            classes = None  # as from_probs decides: names that do not fit name nothing
        if plan.rows == 1:
            return (_prob_row(flat, classes, labels[0]),)
        return tuple(
            [
                _prob_row(flat[i * width : (i + 1) * width], classes, labels[i])
                for i in range(plan.rows)
            ]
        )


def _one_row(plan: Plan, datas: list[Any]) -> tuple[Prediction] | None:
    """_rows of a one-row answer with a label and two or more probabilities, without the
    per-row lists: most answers of most models (same checks, same row)."""
    value = datas[plan.label][0]
    kind = type(value)
    if kind is str:
        label = value  # map_label leaves text as it is
    elif kind is int or kind is bool:
        label = map_label(label_text(value), value, plan.classes)
    else:
        return None
    probs = datas[plan.prob]
    for p in probs:
        if type(p) is not float:
            return None
    if not math.isfinite(sum(probs)):  # inf or nan anywhere makes the sum so
        return None
    values = tuple(probs)
    ranked = sorted(values, reverse=True)
    return (classified_row(label, values, plan.row_classes, ranked[0], ranked[0] - ranked[1]),)


def _prob_row(probs: list[float], classes: tuple[str, ...] | None, label: str | None) -> Prediction:
    """from_probs for two or more probabilities whose class names, if any, fit them."""
    values = tuple(probs)
    ranked = sorted(values, reverse=True)
    if label is None:
        best = max(range(len(values)), key=values.__getitem__)
        label = classes[best] if classes else str(best)
    return classified_row(label, values, classes, ranked[0], ranked[0] - ranked[1])


def _signature(outputs: list[Any]) -> tuple[Signature, list[Any]] | None:
    """Each output's (name, datatype, shape, classes) and its data, if all are tensors."""
    signature = []
    datas = []
    for item in outputs:
        if type(item) is not dict or "data" not in item:
            return None
        # Exact types only: as dict keys True == 1 == 1.0, but not as tensor metadata.
        name, datatype, shape = item.get("name"), item.get("datatype", ""), item.get("shape")
        if type(name) is not str or type(datatype) is not str or type(shape) is not list:
            return None
        for dim in shape:
            if type(dim) is not int:
                return None
        params = item.get("parameters")
        classes = class_names(params) if isinstance(params, dict) else None
        signature.append((name, datatype, tuple(shape), classes))
        datas.append(item["data"])
    return tuple(signature), datas


def _sizes_fit(plan: Plan, datas: list[Any]) -> bool:
    """Every output's data is a flat list of the size its shape says."""
    for data in datas:
        if type(data) is not list:
            return False
    if tuple(map(len, datas)) != plan.sizes:  # one output per size: the plan is this shape's
        return False
    for i in plan.others:
        for value in datas[i]:
            if type(value) is list:
                return False
    return True


def _labels(values: list[Any], classes: tuple[str, ...] | None) -> list[str | None] | None:
    """One label text per value, or None when a value is no plain label."""
    out: list[str | None] = []
    for value in values:
        kind = type(value)
        if kind is str:
            out.append(value)  # map_label leaves text as it is
        elif kind is int or kind is bool:
            out.append(map_label(label_text(value), value, classes))
        else:
            return None
    return out


def _finite_floats(values: list[Any]) -> bool:
    for value in values:
        if type(value) is not float:
            return False
    return math.isfinite(sum(values))  # inf or nan anywhere makes the sum so


def make_plan(signature: Signature, configured: tuple[str, ...] | None) -> Plan | None:
    """The plan of one answer shape, or None when the general path must decide."""
    dims = [shape for _, _, shape, _ in signature]
    if not all(is_dim(d) for shape in dims for d in shape):
        return None
    counts = {shape[0] if shape else 1 for shape in dims}
    if len(counts) != 1:
        return None
    widths = [math.prod(shape[1:]) if len(shape) > 1 else 1 for shape in dims]
    names = [str(name) for name, _, _, _ in signature]
    types = [str(datatype).upper() for _, datatype, _, _ in signature]
    label = next(
        (i for i, (n, t) in enumerate(zip(names, types, strict=True)) if _labelish(n, t)), -1
    )
    if label >= 0 and widths[label] != 1:
        return None
    floats = [i for i, t in enumerate(types) if t.startswith(FLOAT_TYPES) and i != label]
    prob = next((i for i in floats if any(h in names[i].lower() for h in PROB_HINTS)), -1)
    if prob < 0 and (floats or label < 0):  # unnamed probabilities, or regression
        return None
    if prob >= 0 and widths[prob] == 0:  # empty probability rows: the general path refuses
        return None
    rows = counts.pop()
    classes = resolve_classes(signature[prob if prob >= 0 else label][3], configured)
    width = widths[prob] if prob >= 0 else 1
    return Plan(
        sizes=tuple(rows * w for w in widths),
        rows=rows,
        label=label,
        prob=prob,
        width=width,
        classes=classes,
        others=tuple(i for i in range(len(signature)) if i not in (label, prob)),
        contract=tuple(
            ContractField(n, t, tuple(shape[1:]))
            for n, t, shape in zip(names, types, dims, strict=True)
        ),
        one_row=rows == 1 and label >= 0 and prob >= 0 and width >= 2,
        row_classes=classes if classes is not None and len(classes) == width else None,
    )


def _labelish(name: str, datatype: str) -> bool:
    return datatype.startswith(LABEL_TYPES) or name.lower() in LABEL_NAMES
