"""Open Inference Protocol v2 (KServe v2, MLServer, Triton HTTP): named output tensors.

An answer is `{"outputs": [{"name", "shape", "datatype", "data"}, ...]}` with data flat in
row-major order (nested lists are accepted too); shape[0] is the row count. Tensors take
roles:
- label: a BYTES / INT / UINT / BOOL tensor, or one named like a label, with one value per row;
- probabilities: a floating-point tensor named like one (`prob`, `softmax`), or one whose rows
  are distributions; class names from its `parameters.classes` or `[outputs] classes`;
- score: otherwise the first floating-point tensor (regression; per-row vectors allowed).
Every tensor's name, datatype and per-row shape form the answer's contract, so a renamed
output is a contract difference, not a parse error.

The usual answers (a label and a named probability tensor, flat data) take the fast path
of analysis.adapters.oip_v2_fast, which decides per answer shape what this module decides
per answer, and hands anything unusual back here.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    label_text,
    load_json,
    looks_like_probs,
    map_label,
    resolve_classes,
)
from analysis.adapters.oip_v2_fast import (
    FLOAT_TYPES,
    LABEL_NAMES,
    LABEL_TYPES,
    PROB_HINTS,
    SYNTHETIC_GENERATOR,
    FastOip,
    class_names,
)
from analysis.adapters.rows import RequestRows, tensor_rows
from common.settings import OutputSettings

__all__ = ["SYNTHETIC_GENERATOR", "OipV2Adapter"]


@dataclass(frozen=True)
class _Tensor:
    name: str
    datatype: str
    row_shape: tuple[int, ...]
    rows: list[object]  # per-row values: a scalar, or a list for wider rows
    classes: tuple[str, ...] | None

    @property
    def is_float(self) -> bool:
        return self.datatype.startswith(FLOAT_TYPES)

    def float_rows(self) -> list[list[float]]:
        out = [r if isinstance(r, list) else [r] for r in self.rows]
        if not all(is_number(v) for row in out for v in row):
            raise UnparseableOutput(f"tensor {self.name!r} ({self.datatype}) holds non-numbers")
        return [[float(v) for v in row] for row in out]  # type: ignore[arg-type]


def _tensor(item: object) -> _Tensor:
    if not isinstance(item, dict) or "name" not in item or "data" not in item:
        raise UnparseableOutput("oip-v2: an output is not a {name, shape, datatype, data} tensor")
    shape = item.get("shape")
    if not isinstance(shape, list):
        raise UnparseableOutput(f"oip-v2: output {item['name']!r} has no shape list")
    rows = tensor_rows(shape, item["data"])
    if rows is None:
        raise UnparseableOutput(f"oip-v2: output {item['name']!r}: data does not fit shape {shape}")
    params = item.get("parameters")
    names = class_names(params) if isinstance(params, dict) else None
    return _Tensor(
        name=str(item["name"]),
        datatype=str(item.get("datatype", "")).upper(),
        row_shape=tuple(shape[1:]),
        rows=rows,
        classes=names,
    )


class OipV2Adapter(RequestRows):
    """The Open Inference Protocol v2 REST answer."""

    name = "oip-v2"

    def __init__(self, outputs: OutputSettings) -> None:
        self.classes = outputs.classes or None
        self.fast = FastOip(self.classes)

    def parse(self, request_body: bytes, response_body: bytes) -> ParsedOutput:
        """Lift an OIP v2 answer."""
        return self.parse_json(load_json(response_body, "response"))

    def parse_json(self, doc: object) -> ParsedOutput:
        """Lift an already decoded answer."""
        fast = self.fast.lift(doc)
        return fast if fast is not None else self.parse_general(doc)

    def parse_general(self, doc: object) -> ParsedOutput:
        """Lift any answer tensor by tensor (the fast path's reference)."""
        outputs = doc.get("outputs") if isinstance(doc, dict) else None
        if not isinstance(outputs, list) or not outputs:
            raise UnparseableOutput("oip-v2: no `outputs` tensor list")
        tensors = [_tensor(item) for item in outputs]
        counts = {len(t.rows) for t in tensors}
        if len(counts) != 1:
            raise UnparseableOutput(f"oip-v2: outputs disagree on the row count {sorted(counts)}")
        rows, kind, classes = self._lift(tensors)
        contract = tuple(ContractField(t.name, t.datatype, t.row_shape) for t in tensors)
        return ParsedOutput(
            protocol=self.name,
            kind=kind,
            rows=tuple(rows),
            contract=contract,
            labels=classes or (),
            synthetic=_is_synthetic(doc),
        )

    def _lift(self, tensors: list[_Tensor]) -> tuple[list[Prediction], str, tuple[str, ...] | None]:
        label_t = _label_tensor(tensors)
        prob_t = self._prob_tensor(tensors, label_t)
        if prob_t is not None:
            classes = resolve_classes(prob_t.classes, self.classes)
            raws = label_t.rows if label_t else [None] * len(prob_t.rows)
            labels = [map_label(label_text(r), r, classes) for r in raws]
            rows = [
                from_probs(p, classes, label)
                for p, label in zip(prob_t.float_rows(), labels, strict=True)
            ]
            return rows, KIND_CLASSIFICATION, classes
        if label_t is not None:
            classes = resolve_classes(label_t.classes, self.classes)
            rows = [Prediction(label=map_label(label_text(r), r, classes)) for r in label_t.rows]
            return rows, KIND_CLASSIFICATION, classes
        score_t = next((t for t in tensors if t.is_float), None)
        if score_t is None:
            raise UnparseableOutput("oip-v2: no label, probability or numeric output tensor")
        return [from_scores(r) for r in score_t.float_rows()], KIND_REGRESSION, None

    def _prob_tensor(self, tensors: list[_Tensor], label_t: _Tensor | None) -> _Tensor | None:
        floats = [t for t in tensors if t.is_float and t is not label_t]
        named = next((t for t in floats if any(h in t.name.lower() for h in PROB_HINTS)), None)
        if named is not None:
            return named
        for t in floats:
            rows = t.float_rows()
            width = len(rows[0]) if rows else 0
            if looks_like_probs(rows) or self._fits_classes(width, t.classes):
                return t
        return None

    def _fits_classes(self, width: int, declared: tuple[str, ...] | None) -> bool:
        classes = resolve_classes(declared, self.classes)
        return classes is not None and len(classes) >= 2 and width in (1, len(classes))


def _label_tensor(tensors: list[_Tensor]) -> _Tensor | None:
    for t in tensors:
        typed = t.datatype.startswith(LABEL_TYPES) or t.name.lower() in LABEL_NAMES
        if typed and all(is_label_like(r) for r in t.rows):
            return t
    return None


def _is_synthetic(doc: dict[str, object]) -> bool:
    params = doc.get("parameters")
    return isinstance(params, dict) and params.get("generator") == SYNTHETIC_GENERATOR
