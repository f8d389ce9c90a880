"""The canonical form every model answer is lifted into before two answers are compared.

Each wire protocol has its own adapter module (Diffy's "lifter"): it turns a request body
and a response body into a `ParsedOutput` of per-row `Prediction`s. Comparison, summaries
and statistics only ever see this form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from common import oip_binary
from common.errors import DecodeError

KIND_CLASSIFICATION = "classification"
KIND_REGRESSION = "regression"
KIND_TEXT = "text"


class UnparseableOutput(DecodeError):
    """A body is not something the adapter understands (counted as `unparseable`).

    `kind` names a hostile answer the report counts on its own (`non_utf8`), else ""."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Prediction:
    """One row of one model's answer, in canonical form. Unknown parts stay None."""

    label: str | None = None  # predicted class, as text
    probs: tuple[float, ...] | None = None  # class probabilities
    classes: tuple[str, ...] | None = None  # class names aligned with probs, when known
    score: float | None = None  # regression output (first element of a vector)
    vector: tuple[float, ...] | None = None  # full regression / embedding vector
    text: str | None = None  # generative answer
    confidence: float | None = None  # max probability (or first-token probability)
    margin: float | None = None  # top1 - top2 probability (binary: |2p - 1|)
    mean_logprob: float | None = None  # generative: mean token log-probability
    finish_reason: str | None = None  # generative: why the model stopped
    tools: tuple[str, ...] | None = None  # generative: names of the tools / functions called


@dataclass(frozen=True, slots=True)
class ContractField:
    """One element of an answer's shape: output name, datatype and per-row shape."""

    name: str
    datatype: str = ""
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class ParsedOutput:
    """A whole answer: its rows, what kind of model it looks like, and its contract."""

    protocol: str
    kind: str
    rows: tuple[Prediction, ...]
    contract: tuple[ContractField, ...] = field(default_factory=tuple)
    labels: tuple[str, ...] = ()  # class names the answer declares (for contract diffs)
    # True when shadowtrial produced this answer itself (an ONNX candidate): its protocol,
    # output names and datatypes are ours, not the model's, so they are no contract.
    synthetic: bool = False
    # Hostile but parsed (the report's text section counts each): empty_choices,
    # interrupted_stream (no `[DONE]` and no finish_reason).
    flags: tuple[str, ...] = ()


# -- fast construction of the per-row objects ------------------------------------------
# A frozen dataclass's __init__ sets each field through object.__setattr__ (a generic
# attribute lookup per field): about 17,000 instructions for a Prediction, more than the
# rest of lifting a row; calling each slot's descriptor still costs some 900 a field. These
# build the very same objects (equal, hashable, frozen) as a mutable twin with the same
# slots, whose fields are plain attribute stores, then give it its real class (an
# assignment CPython allows, and checks, between classes of one memory layout): some
# 3,500 instructions for a Prediction.

_new = object.__new__
_set_attr = object.__setattr__


def draft_class(cls: type) -> type:
    """A mutable class with the slots of the slots dataclass `cls`, in the same order: an
    instance whose every slot is set becomes a `cls` by assigning its `__class__`."""
    return type(f"_{cls.__name__}Draft", (), {"__slots__": cls.__slots__})


_PredictionDraft: Any = draft_class(Prediction)


def classified_row(
    label: str | None,
    probs: tuple[float, ...] | None,
    classes: tuple[str, ...] | None,
    confidence: float | None,
    margin: float | None,
) -> Prediction:
    """Prediction(label, probs, classes, confidence=confidence, margin=margin), the rest
    None: a classification row, built for every row of every answer."""
    row = _new(_PredictionDraft)
    row.label = label
    row.probs = probs
    row.classes = classes
    row.score = None
    row.vector = None
    row.text = None
    row.confidence = confidence
    row.margin = margin
    row.mean_logprob = None
    row.finish_reason = None
    row.tools = None
    row.__class__ = Prediction
    return row  # type: ignore[no-any-return]


def parsed_output(
    protocol: str,
    kind: str,
    rows: tuple[Prediction, ...],
    contract: tuple[ContractField, ...],
    labels: tuple[str, ...],
    synthetic: bool,
) -> ParsedOutput:
    """ParsedOutput(protocol, kind, rows, contract, labels, synthetic): one per answer."""
    parsed = _new(ParsedOutput)
    _set_attr(parsed, "__dict__", {
        "protocol": protocol, "kind": kind, "rows": rows, "contract": contract,
        "labels": labels, "synthetic": synthetic, "flags": (),
    })  # fmt: skip
    return parsed


class OutputAdapter(Protocol):
    """Lifts one protocol's answers into canonical predictions."""

    name: str

    def parse(self, request_body: bytes, response_body: bytes) -> ParsedOutput:
        """Parse one answer; raise UnparseableOutput for anything not understood."""
        ...

    def request_rows(self, request_body: bytes) -> list[dict[str, object]]:
        """The request's rows as dicts (feature name -> value), for slicing per row."""
        ...

    def rows_from_json(self, request: object) -> list[dict[str, object]]:
        """Like request_rows, for a request body the caller has already decoded."""
        ...


# -- lifting helpers shared by the protocol adapters ---------------------------------------

# A per-row probability vector must sum to 1 within this tolerance to be taken for one
# when nothing else (a name, configured classes) says what the numbers are.
PROB_SUM_TOL = 1e-3


def load_json(body: bytes, what: str = "body") -> object:
    """Decode a JSON body (or OIP v2 binary tensors), turning every failure into
    UnparseableOutput."""
    if not body:
        raise UnparseableOutput(f"empty {what}")
    try:
        return orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError) as exc:
        error = exc
    try:
        doc = oip_binary.inline(body)
    except oip_binary.BinaryTensorError as exc:
        raise UnparseableOutput(f"{what}: binary tensor data: {exc}") from None
    if doc is None:
        raise UnparseableOutput(f"{what} is not JSON: {error}") from None
    return doc


def is_number(value: object) -> bool:
    """A JSON number that is a finite float or an int (bool is not a number here)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def label_text(value: object) -> str | None:
    """The text form of a class label (str of the class); None when it is no label."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, list) and len(value) == 1:
        return label_text(value[0])
    return None


def is_label_like(value: object) -> bool:
    """Strings, ints and bools name classes; floats are scores (JSON keeps the difference)."""
    if isinstance(value, list) and len(value) == 1:
        return is_label_like(value[0])
    return isinstance(value, str | bool) or (isinstance(value, int) and not isinstance(value, bool))


def number_list(value: object) -> list[float] | None:
    """`value` as a non-empty list of finite floats, or None."""
    if not isinstance(value, list) or not value or not all(is_number(v) for v in value):
        return None
    return [float(v) for v in value]


def looks_like_probs(rows: list[list[float]]) -> bool:
    """Every row has >= 2 values in [0, 1] summing to 1: a probability distribution."""
    return bool(rows) and all(
        len(row) >= 2
        and all(-1e-6 <= v <= 1 + 1e-6 for v in row)
        and abs(math.fsum(row) - 1.0) <= PROB_SUM_TOL
        for row in rows
    )


def map_label(label: str | None, raw: object, classes: tuple[str, ...] | None) -> str | None:
    """An integer label that is an index into known class names becomes that name.

    Only when the integer's text is not itself a class name, so classes "1", "2", "3" are
    never shifted by one.
    """
    if label is None or not classes or label in classes:
        return label
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(classes):
        return classes[raw]
    return label


def resolve_classes(
    declared: tuple[str, ...] | None, configured: tuple[str, ...] | None
) -> tuple[str, ...] | None:
    """The class names an answer's labels and probabilities mean.

    Declared names win, except when they are only the indices "0" .. "k-1" and `[outputs]
    classes` names k classes: a classifier trained on integer targets (scikit-learn's, and
    its ONNX export) declares its indices, and the configured names are what they mean, so
    both sides of a pair map their integers through the same names.
    """
    if not declared:
        return configured
    if configured and len(configured) == len(declared) and declared == _indices(len(declared)):
        return configured
    return declared


def _indices(k: int) -> tuple[str, ...]:
    return tuple(str(i) for i in range(k))


def from_probs(
    probs: list[float], classes: tuple[str, ...] | None = None, label: str | None = None
) -> Prediction:
    """A classification row from class probabilities (one value: binary P(positive))."""
    if not probs:
        raise UnparseableOutput("empty probability vector")
    if len(probs) == 1:
        p = probs[0]
        probs = [1.0 - p, p]
    if classes is not None and len(classes) != len(probs):
        classes = None
    ranked = sorted(probs, reverse=True)
    if label is None:
        best = max(range(len(probs)), key=probs.__getitem__)
        label = classes[best] if classes else str(best)
    return classified_row(label, tuple(probs), classes, ranked[0], ranked[0] - ranked[1])


def from_scores(values: list[float]) -> Prediction:
    """A regression row: the first value is the score, all of them the vector."""
    if not values:
        raise UnparseableOutput("empty prediction vector")
    return Prediction(score=values[0], vector=tuple(values))


def json_type(value: object) -> str:
    """The JSON type name used as a contract datatype for JSON-row protocols."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"  # JSON writes 1.0 as 1 at will: no contract in int vs float
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        inner = {json_type(v) for v in value}
        return f"list[{inner.pop() if len(inner) == 1 else 'mixed'}]" if inner else "list"
    if isinstance(value, dict):
        return "object"
    return "null"
