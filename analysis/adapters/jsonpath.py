"""Any other JSON answer: `[outputs] label`, `proba`, `score` and `text` paths say where
things are (a `text` path alone makes a text answer, compared by meaning like OpenAI's).

How a path maps to rows:
- a path with `[*]` (or `.*`) yields one match per row: `$.results[*].label`;
- a path without a wildcard matching a list yields one row per element for `label` and
  `score` (`$.labels` -> ["a", "b"]), and for `proba` one row per inner list when it
  matches a list of lists (`$.probs` -> [[.1, .9], [.8, .2]]), else one row;
- a path matching a scalar yields one row.
Every configured path that matches must give the same row count. `[outputs] classes` names
the classes in probability order; a `proba` path matching `{class: p}` objects names
them itself.
"""

from __future__ import annotations

import dataclasses

import orjson

from analysis.adapters.base import (
    KIND_CLASSIFICATION,
    KIND_REGRESSION,
    KIND_TEXT,
    ContractField,
    ParsedOutput,
    Prediction,
    UnparseableOutput,
    from_probs,
    from_scores,
    is_number,
    json_type,
    label_text,
    load_json,
    map_label,
    number_list,
)
from analysis.adapters.rows import RequestRows
from analysis.jsonpath import JsonPath, JsonPathError, compile_path
from common.errors import ConfigError
from common.settings import OutputSettings


def _compile(key: str, text: str | None) -> JsonPath | None:
    if text is None:
        return None
    try:
        return compile_path(text)
    except JsonPathError as exc:
        raise ConfigError(f"outputs.{key}", text, str(exc)) from None


class JsonPathAdapter(RequestRows):
    """Configured JSON paths to the label, the class probabilities and/or the score."""

    name = "jsonpath"

    def __init__(self, outputs: OutputSettings) -> None:
        self.label = _compile("label", outputs.label)
        self.proba = _compile("proba", outputs.proba)
        self.score = _compile("score", outputs.score)
        self.text = _compile("text", outputs.text)
        if all(p is None for p in (self.label, self.proba, self.score, self.text)):
            raise ConfigError(
                "outputs.label", None, "jsonpath needs label, proba, score or text paths"
            )
        self.classes = outputs.classes or None

    def parse(self, request_body: bytes, response_body: bytes) -> ParsedOutput:
        """Lift an answer by the configured paths."""
        return self.parse_json(load_json(response_body, "response"))

    def parse_json(self, doc: object) -> ParsedOutput:
        """Lift an already decoded answer."""
        columns = {
            "label": _row_values(self.label, doc, nested=False),
            "proba": _row_values(self.proba, doc, nested=True),
            "score": _row_values(self.score, doc, nested=False),
            "text": _row_values(self.text, doc, nested=False),
        }
        found = {k: v for k, v in columns.items() if v is not None}
        if not found:
            raise UnparseableOutput("jsonpath: no configured path matches the answer")
        counts = {len(v) for v in found.values()}
        if len(counts) != 1:
            raise UnparseableOutput(f"jsonpath: paths disagree on the row count {sorted(counts)}")
        n = counts.pop()
        rows = tuple(self._row(*(_at(found.get(k), i) for k in columns)) for i in range(n))
        kind = _KINDS.get(frozenset(found), KIND_CLASSIFICATION)
        contract = tuple(
            ContractField(k, json_type(v[0]) if v else "", _width(v)) for k, v in found.items()
        )
        declared = self.classes or next((r.classes for r in rows if r.classes), None)
        return ParsedOutput(self.name, kind, rows, contract, declared or ())

    def _row(self, label: object, proba: object, score: object, text: object) -> Prediction:
        row = self._scored(label, proba, score)
        return row if text is None else dataclasses.replace(row, text=_text(text))

    def _scored(self, label: object, proba: object, score: object) -> Prediction:
        classes = self.classes
        if isinstance(proba, dict) and proba:  # {class: probability}
            classes = tuple(str(k) for k in proba)
            proba = list(proba.values())
        text = map_label(label_text(label), label, classes) if label is not None else None
        probs = [float(proba)] if is_number(proba) else number_list(proba)  # type: ignore[arg-type]
        if probs is not None:
            row = from_probs(probs, classes, text)
        elif text is not None:
            row = Prediction(label=text)
        else:
            row = Prediction()
        values = [float(score)] if is_number(score) else number_list(score)  # type: ignore[arg-type]
        if values is not None:
            scored = from_scores(values)
            row = dataclasses.replace(row, score=scored.score, vector=scored.vector)
        return row


_ABSENT = object()
_KINDS = {frozenset({"score"}): KIND_REGRESSION, frozenset({"text"}): KIND_TEXT}


def _text(value: object) -> str:
    """A text field as text: a string as is, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # e.g. an integer beyond 64 bits
        return str(value)


def _at(values: list[object] | None, i: int) -> object:
    return None if values is None else values[i]


def _width(values: list[object]) -> tuple[int, ...]:
    return (len(values[0]),) if values and isinstance(values[0], list) else ()


def _row_values(path: JsonPath | None, doc: object, nested: bool) -> list[object] | None:
    """The per-row values a path yields (see the module docstring), None without a match."""
    if path is None:
        return None
    if path.has_wildcard:
        return path.find(doc) or None
    value = path.first(doc, _ABSENT)
    if value is _ABSENT or value is None:
        return None
    if not isinstance(value, list):
        return [value]
    if nested:
        return value if value and all(isinstance(v, list) for v in value) else [value]
    return value
