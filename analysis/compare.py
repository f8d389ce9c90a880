"""Compare two parsed answers to the same request: per-row agreement and contract changes.

Rows are aligned by position; a different row count is an error of the candidate (never a
guess at the alignment). Agreement depends on the primary's kind:
- classification: the same label text;
- regression: |candidate - primary| <= atol + rtol * |primary| (for vectors, every element);
- text: equal after whitespace normalisation.
Contract differences are evidence about the candidate's answer shape, counted per kind:
`protocol`, `output_names`, `datatype`, `shape` (only when both sides speak the same
protocol and neither answer was produced by shadowtrial itself, i.e. an ONNX candidate),
plus `kind`, `label_set` and `missing_field`, which are always checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from analysis.adapters.base import (
    KIND_CLASSIFICATION,
    KIND_REGRESSION,
    KIND_TEXT,
    ContractField,
    ParsedOutput,
    Prediction,
    draft_class,
)
from common.settings import OutputSettings

_new = object.__new__
CONTRACT_KINDS = (
    "output_names", "datatype", "shape", "label_set", "missing_field", "protocol", "kind",
)  # fmt: skip
# Canonical fields whose absence on the candidate's side is a contract difference.
_FIELDS = {
    "label": "a label",
    "probs": "class probabilities",
    "score": "a numeric score",
    "text": "text",
    "confidence": "a confidence (probabilities or token logprobs)",
}
_SHOWN = 5  # names listed in a detail before "..."
# _missing_fields reads these five by name on its one-row path.
assert tuple(_FIELDS) == ("label", "probs", "score", "text", "confidence")


@dataclass(frozen=True, slots=True)
class RowComparison:
    """One row of both answers and how they compare."""

    agree: bool
    primary: Prediction
    candidate: Prediction
    diff: float | None = None  # candidate - primary score (regression)
    abs_diff: float | None = None  # |diff|; for vectors the largest element difference
    conf_delta: float | None = None  # candidate confidence - primary confidence
    similarity: float | None = None  # text by meaning: cosine of the two answers' embeddings
    text_cut: bool = False  # text by meaning: an answer was cut to outputs.text_max_chars
    threshold: float | None = None  # text by meaning: the threshold that judged the row
    calibrated: bool = False  # text by meaning: that threshold came from the noise floor


_RowDraft: Any = draft_class(RowComparison)


def _classified(agree: bool, p: Prediction, c: Prediction, conf: float | None) -> RowComparison:
    """RowComparison(agree, p, c, conf_delta=conf) without the frozen dataclass's per-field
    object.__setattr__ (analysis.adapters.base.classified_row): one per compared row."""
    row = _new(_RowDraft)
    row.agree = agree
    row.primary = p
    row.candidate = c
    row.diff = None
    row.abs_diff = None
    row.conf_delta = conf
    row.similarity = None
    row.text_cut = False
    row.threshold = None
    row.calibrated = False
    row.__class__ = RowComparison
    return row  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class ContractDiff:
    """One way the candidate's answer differs in shape from the primary's, with an example."""

    kind: str  # one of CONTRACT_KINDS
    detail: str


@dataclass
class Comparison:
    """Rows compared by position, contract differences, or an error (row count mismatch)."""

    rows: list[RowComparison] = field(default_factory=list)
    contract_diffs: list[ContractDiff] = field(default_factory=list)
    error: str | None = None
    kind: str = ""  # the primary's kind: how rows were compared


def compare_outputs(
    primary: ParsedOutput, candidate: ParsedOutput, outputs: OutputSettings
) -> Comparison:
    """Compare two answers; never raises for answers an adapter produced."""
    diffs = contract_diffs(primary, candidate)
    n_p, n_c = len(primary.rows), len(candidate.rows)
    if n_p != n_c:
        error = f"row_count_mismatch: primary {n_p} rows, candidate {n_c}"
        return Comparison([], diffs, error, primary.kind)
    if primary.kind == KIND_CLASSIFICATION:  # compare_row's last case, without its tests
        if n_p == 1:  # the usual answer: one row each
            rows = [_classified_pair(primary.rows[0], candidate.rows[0])]
            return Comparison(rows, diffs, None, primary.kind)
        pairs = zip(primary.rows, candidate.rows, strict=True)  # equal counts, checked above
        rows = [_classified_pair(p, c) for p, c in pairs]
        return Comparison(rows, diffs, None, primary.kind)
    rows = [
        compare_row(p, c, primary.kind, outputs)
        for p, c in zip(primary.rows, candidate.rows, strict=True)
    ]
    return Comparison(rows, diffs, None, primary.kind)


def _classified_pair(p: Prediction, c: Prediction) -> RowComparison:
    """compare_row for a classification: the same label text agrees."""
    pconf, cconf = p.confidence, c.confidence
    conf = cconf - pconf if pconf is not None and cconf is not None else None
    return _classified(p.label is not None and p.label == c.label, p, c, conf)


def compare_row(p: Prediction, c: Prediction, kind: str, outputs: OutputSettings) -> RowComparison:
    """Compare one row of each answer under the primary's kind."""
    conf = None
    if p.confidence is not None and c.confidence is not None:
        conf = c.confidence - p.confidence
    if kind == KIND_REGRESSION:
        agree, diff, abs_diff = _regression(p, c, outputs.atol, outputs.rtol)
        return RowComparison(agree, p, c, diff, abs_diff, conf)
    if kind == KIND_TEXT:
        agree = p.text is not None and c.text is not None and _norm(p.text) == _norm(c.text)
        return RowComparison(agree, p, c, conf_delta=conf)
    return _classified(p.label is not None and p.label == c.label, p, c, conf)


def _norm(text: str) -> str:
    return " ".join(text.split())


def _regression(
    p: Prediction, c: Prediction, atol: float, rtol: float
) -> tuple[bool, float | None, float | None]:
    if p.score is None or c.score is None:
        return False, None, None
    diff = c.score - p.score
    pv, cv = p.vector or (p.score,), c.vector or (c.score,)
    if len(pv) != len(cv):
        return False, diff, abs(diff)
    gaps = [abs(b - a) for a, b in zip(pv, cv, strict=True)]
    agree = all(g <= atol + rtol * abs(a) for g, a in zip(gaps, pv, strict=True))
    return agree, diff, max(gaps)


# -- contract differences ---------------------------------------------------------------------


def contract_diffs(primary: ParsedOutput, candidate: ParsedOutput) -> list[ContractDiff]:
    """Every way the candidate's answer shape differs from the primary's."""
    diffs: list[ContractDiff] = []
    if primary.kind != candidate.kind:
        diffs.append(ContractDiff("kind", f"primary {primary.kind}, candidate {candidate.kind}"))
    if not (primary.synthetic or candidate.synthetic):
        if primary.protocol != candidate.protocol:
            detail = f"primary {primary.protocol}, candidate {candidate.protocol}"
            diffs.append(ContractDiff("protocol", detail))
        elif primary.contract != candidate.contract:  # usually the very same tuple
            diffs.extend(_field_diffs(primary.contract, candidate.contract))
    diffs.extend(_label_set_diffs(primary, candidate))
    diffs.extend(_missing_fields(primary, candidate))
    return diffs


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return f"[{shown}{', ...' if len(names) > _SHOWN else ''}]"


def _field_diffs(
    primary: tuple[ContractField, ...], candidate: tuple[ContractField, ...]
) -> list[ContractDiff]:
    p_fields = {f.name: f for f in primary}
    c_fields = {f.name: f for f in candidate}
    diffs: list[ContractDiff] = []
    lacks = [n for n in p_fields if n not in c_fields]
    adds = [n for n in c_fields if n not in p_fields]
    if lacks or adds:
        detail = f"candidate lacks {_names(lacks)}, adds {_names(adds)}"
        diffs.append(ContractDiff("output_names", detail))
    for name, pf in p_fields.items():
        cf = c_fields.get(name)
        if cf is not None and pf.datatype != cf.datatype:
            diffs.append(ContractDiff("datatype", f"{name}: {pf.datatype} -> {cf.datatype}"))
        if cf is not None and pf.shape != cf.shape:
            diffs.append(ContractDiff("shape", f"{name}: {list(pf.shape)} -> {list(cf.shape)}"))
    return diffs


def _label_set_diffs(primary: ParsedOutput, candidate: ParsedOutput) -> list[ContractDiff]:
    if KIND_CLASSIFICATION not in (primary.kind, candidate.kind):
        return []
    if primary.labels == candidate.labels:  # the same declared classes, or none
        return []
    p_set, c_set = set(primary.labels), set(candidate.labels)
    if p_set and c_set:
        if p_set == c_set:
            return []
        lacks, adds = sorted(p_set - c_set), sorted(c_set - p_set)
        detail = f"candidate classes lack {_names(lacks)}, add {_names(adds)}"
        return [ContractDiff("label_set", detail)]
    if p_set:
        outside = sorted({r.label for r in candidate.rows if r.label is not None} - p_set)
        if outside:
            detail = f"candidate predicts {_names(outside)}, not among the primary's classes"
            return [ContractDiff("label_set", detail)]
    if c_set:
        outside = sorted({r.label for r in primary.rows if r.label is not None} - c_set)
        if outside:
            detail = f"primary predicts {_names(outside)}, not among the candidate's classes"
            return [ContractDiff("label_set", detail)]
    return []


def _missing_fields(primary: ParsedOutput, candidate: ParsedOutput) -> list[ContractDiff]:
    p_rows, c_rows = primary.rows, candidate.rows
    if not p_rows or not c_rows or primary.kind != candidate.kind:
        return []
    if len(p_rows) == 1 and len(c_rows) == 1:  # the usual answer: one row each, inline
        p, c = p_rows[0], c_rows[0]
        if (
            (p.label is not None and c.label is None)
            or (p.probs is not None and c.probs is None)
            or (p.score is not None and c.score is None)
            or (p.text is not None and c.text is None)
            or (p.confidence is not None and c.confidence is None)
        ):  # the fields of _FIELDS, read directly
            return _missing_fields_of(p_rows, c_rows)
        return []
    return _missing_fields_of(p_rows, c_rows)


def _missing_fields_of(
    p_rows: tuple[Prediction, ...], c_rows: tuple[Prediction, ...]
) -> list[ContractDiff]:
    diffs = []
    for name, what in _FIELDS.items():
        if _has(p_rows, name) and not _has(c_rows, name):
            detail = f"{name}: candidate answers carry no {what}"
            diffs.append(ContractDiff("missing_field", detail))
    return diffs


def _has(rows: tuple[Prediction, ...], name: str) -> bool:
    """Some row has the field (one row, the usual case, without a generator)."""
    if len(rows) == 1:
        return getattr(rows[0], name) is not None
    return any(getattr(row, name) is not None for row in rows)
