"""The primary's answers as watched features: class mix, confidence, margin, score.

A recorded line that carries the primary's answer (`shadowtrial replay` JSONL with
`primary_body`) is lifted by the same adapters as pairs (`[outputs] protocol = auto`), and
each answer row becomes a row of four features, so class mix and confidence drift get the
same distance, correction and flag as inputs: "the model grows less confident" is
`confidence` drifting, with the exact means beside it. An answer no adapter understands
is counted `unreadable`; an error status is counted in `errors`, not parsed.
"""

from __future__ import annotations

import math
from typing import Any

from analysis.adapters import select_adapter
from analysis.adapters.base import OutputAdapter, Prediction
from analysis.watch_state import WatchState
from common.errors import DecodeError
from common.settings import OutputSettings

_ADAPTER: list[OutputAdapter] = []


def _adapter() -> OutputAdapter:
    if not _ADAPTER:
        _ADAPTER.append(select_adapter(OutputSettings()))
    return _ADAPTER[0]


MAX_CLASS_TEXT = 200  # a predicted class is cut to this many characters (then `…`)


def _row(prediction: Prediction) -> dict[str, object]:
    label = prediction.label
    if isinstance(label, str) and len(label) > MAX_CLASS_TEXT:
        label = label[: MAX_CLASS_TEXT - 1] + "…"
    row = {
        "class": label, "confidence": prediction.confidence,
        "margin": prediction.margin, "score": prediction.score,
    }  # fmt: skip
    return {k: v for k, v in row.items() if v is not None}


def watch_answer(
    request: bytes,
    answer: bytes,
    status: int,
    state: WatchState,
    adapter: OutputAdapter | None = None,
) -> list[Prediction]:
    """Count one primary answer into `state` (requests, errors, unreadable, rows); return
    its predictions (the live watch joins labels to a single row's class). `adapter`: the
    configured one (`[outputs]`); by default the protocol is told from the answer."""
    state.requests += 1
    if status >= 400 or status <= 0:
        state.errors += 1
        return []
    try:
        parsed = (adapter or _adapter()).parse(request, answer)
    except (DecodeError, ValueError, RecursionError):
        state.unreadable += 1
        return []
    for prediction in parsed.rows:
        state.add_row(_row(prediction))
    return list(parsed.rows)


def _mean(state: WatchState, name: str) -> float | None:
    feature = state.features.get(name)
    value = feature.mean() if feature is not None else math.nan
    return None if math.isnan(value) else value


def outputs_summary(reference: WatchState, current: WatchState) -> dict[str, Any]:
    """Counts and exact means of both sides (the drift rows are added by analysis.drift)."""
    return {
        "requests": current.requests, "errors": current.errors,
        "error_rate": current.errors / current.requests if current.requests else None,
        "reference_error_rate":
            reference.errors / reference.requests if reference.requests else None,
        "unreadable": current.unreadable,
        "mean_confidence": _mean(current, "confidence"),
        "reference_mean_confidence": _mean(reference, "confidence"),
    }  # fmt: skip
