"""Request bodies -> named feature rows for the watch, without configuration.

Rows come from `analysis.adapters.rows` (every supported protocol). Names follow the
protocol: an OIP v2 tensor `x` of shape [n, d] gives `x[0]` ... `x[d-1]`, an `instances`
list of lists gives `instances[0]` ..., object rows keep their keys, and a scalar column
keeps its name. A list deeper than one level inside a row is not a feature: it is
counted as invalid under its name (a giant nested array costs one count, not memory).
`renames` maps a derived name to the name the training data uses (`x[0]` -> `age`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from analysis.adapters.rows import Row, rows_from_request
from analysis.watch_outputs import watch_answer
from analysis.watch_state import WatchState

MAX_ROWS_PER_REQUEST = 1024  # rows beyond are not watched (a batch of a million rows)
MAX_COLUMNS = 256  # columns of one tensor row beyond are counted over the feature cap

_DEEP = object()  # marks a value that is not a scalar feature


def feature_rows(doc: object, renames: Mapping[str, str] | None = None) -> list[dict[str, object]]:
    """Named feature rows of a decoded request body ([] when its rows cannot be told)."""
    positional = "instances" if isinstance(doc, dict) and "instances" in doc else ""
    rows = rows_from_request(doc)[:MAX_ROWS_PER_REQUEST]
    columns = _one_column_tensors(doc)
    return [_named(row, positional, columns, renames or {}) for row in rows]


def _one_column_tensors(doc: object) -> set[str]:
    """OIP v2 tensors of shape [n, 1]: their rows come as scalars, named `x[0]` all the same."""
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list):
        return set()
    return {
        str(t.get("name"))
        for t in inputs
        if isinstance(t, dict) and isinstance(t.get("shape"), list) and t["shape"][1:] == [1]
    }


def _named(
    row: Row, positional: str, columns: set[str], renames: Mapping[str, str]
) -> dict[str, object]:
    named: dict[str, object] = {}
    for key, value in row.items():
        name = f"{positional}[{key}]" if positional and str(key).isdigit() else str(key)
        if key in columns and not isinstance(value, list):
            value = [value]
        if isinstance(value, list):
            for i, item in enumerate(value[:MAX_COLUMNS]):
                column = f"{name}[{i}]"
                named[renames.get(column, column)] = _scalar(item)
        else:
            named[renames.get(name, name)] = _scalar(value)
    return named


def _scalar(value: object) -> object:
    """The value itself when it is a JSON scalar; lists and objects become `_DEEP`."""
    return _DEEP if isinstance(value, list | dict) else value


_REQUEST_KEYS = ("inputs", "instances", "dataframe_split", "dataframe_records", "messages")


def _request(line: bytes | str) -> tuple[object, dict[str, Any] | None]:
    """A JSONL line: a request body, or a `shadowtrial replay` line ({"body": ...}) and
    that line itself (it may carry the primary's answer)."""
    doc = json.loads(line)
    if isinstance(doc, dict) and "body" in doc and not any(k in doc for k in _REQUEST_KEYS):
        body = doc["body"]
        return (json.loads(body) if isinstance(body, str) else body), doc
    return doc, None


def _as_bytes(value: object) -> bytes:
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


def _answer(doc: object, line: dict[str, Any] | None, outputs: WatchState | None) -> None:
    if outputs is None or line is None or "primary_body" not in line:
        return
    status = line.get("primary_status", 200)
    status = status if isinstance(status, int) and not isinstance(status, bool) else 200
    watch_answer(_as_bytes(doc), _as_bytes(line["primary_body"]), status, outputs)


def watch_bodies(
    bodies: Iterable[bytes | str],
    state: WatchState,
    renames: Mapping[str, str] | None = None,
    outputs: WatchState | None = None,
) -> WatchState:
    """Count every request into `state` (and the primary's answers, when a line holds one,
    into `outputs`); a line that is not a JSON request is `unreadable`."""
    for body in bodies:
        state.requests += 1
        try:
            doc, line = _request(body)
        except (ValueError, RecursionError):
            state.unreadable += 1
            continue
        _answer(doc, line, outputs)
        rows = feature_rows(doc, renames)
        if not rows:
            state.unreadable += 1
        for row in rows:
            state.add_row(row)
    return state
