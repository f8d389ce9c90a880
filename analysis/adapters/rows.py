"""Request bodies of every supported protocol -> one feature dict per row, for slicing.

Request formats do not collide (`inputs` tensors, `instances`, `dataframe_split`, chat
`messages`), so one dispatcher serves every output adapter. Rows built from a list are
keyed by position as text (`{"0": x0, "1": x1}`), which `$[1]` addresses in a slice path.
Nothing here raises: a request whose rows cannot be told yields `[]`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from common.oip_binary import load_body

Row = dict[str, object]

# Chat / completion request fields that are content, not row features.
_OPENAI_CONTENT = ("messages", "prompt", "tools", "functions", "input")


def rows_from_request(doc: object) -> list[Row]:
    """Per-row feature dicts of a decoded request body ([] when not understood)."""
    if isinstance(doc, list):
        return _rows_from_list(doc)
    if not isinstance(doc, dict):
        return []
    if "dataframe_split" in doc:
        return _split_rows(doc["dataframe_split"])
    if "dataframe_records" in doc:
        return _records(doc["dataframe_records"])
    if "instances" in doc:
        return _rows_from_list(doc["instances"])
    if "inputs" in doc:
        return _inputs_rows(doc["inputs"])
    if "messages" in doc or "prompt" in doc:
        return [{k: v for k, v in doc.items() if k not in _OPENAI_CONTENT}]
    return []


def _row_from_item(item: object) -> Row:
    if isinstance(item, dict):
        return item
    if isinstance(item, list):
        return {str(i): v for i, v in enumerate(item)}
    return {"0": item}


def _rows_from_list(items: object) -> list[Row]:
    if not isinstance(items, list):
        return []
    return [_row_from_item(item) for item in items]


def _records(records: object) -> list[Row]:
    if not isinstance(records, list):
        return []
    return [r if isinstance(r, dict) else _row_from_item(r) for r in records]


def _split_rows(split: object) -> list[Row]:
    if not isinstance(split, dict) or not isinstance(split.get("data"), list):
        return []
    columns = split.get("columns")
    rows: list[Row] = []
    for item in split["data"]:
        values = item if isinstance(item, list) else [item]
        if isinstance(columns, list):
            rows.append({str(c): v for c, v in zip(columns, values, strict=False)})
        else:
            rows.append({str(i): v for i, v in enumerate(values)})
    return rows


def _inputs_rows(inputs: object) -> list[Row]:
    if isinstance(inputs, list) and inputs and all(_is_tensor(t) for t in inputs):
        return _tensor_rows(inputs)
    if isinstance(inputs, list):
        return _rows_from_list(inputs)
    if isinstance(inputs, dict):
        return _columnar_rows(inputs)
    return []


def _columnar_rows(columns: dict[str, object]) -> list[Row]:
    """{"a": [1, 2], "b": [3, 4]} -> two rows; anything else is one row."""
    lengths = {len(v) for v in columns.values() if isinstance(v, list)}
    if len(lengths) != 1 or not all(isinstance(v, list) for v in columns.values()):
        return [columns]
    n = lengths.pop()
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]  # type: ignore[index]


def _is_tensor(item: object) -> bool:
    return isinstance(item, dict) and "name" in item and "data" in item


def flatten(data: object) -> list[object]:
    """Tensor data in row-major order, whether sent flat or nested."""
    if not isinstance(data, list):
        return [data]
    return list(_walk(data))


def _walk(data: list[object]) -> Iterator[object]:
    for item in data:
        if isinstance(item, list):
            yield from _walk(item)
        else:
            yield item


def tensor_rows(shape: object, data: object) -> list[object] | None:
    """Split one tensor into per-row values (scalar or list); None if shape and data disagree."""
    flat = flatten(data)
    dims = shape if isinstance(shape, list) and all(is_dim(d) for d in shape) else None
    if dims is None:
        return None
    n = dims[0] if dims else 1
    width = math.prod(dims[1:]) if len(dims) > 1 else 1
    if n * width != len(flat):
        return None
    if len(dims) <= 1 or width == 1:
        return flat
    return [flat[i * width : (i + 1) * width] for i in range(n)]


def is_dim(value: object) -> bool:
    """A tensor dimension: a non-negative int below 2**31 (bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def _tensor_rows(tensors: list[dict[str, object]]) -> list[Row]:
    columns: dict[str, list[object]] = {}
    for tensor in tensors:
        values = tensor_rows(tensor.get("shape"), tensor.get("data"))
        if values is not None:
            columns[str(tensor["name"])] = values
    n = max((len(v) for v in columns.values()), default=0)
    return [{k: v[i] for k, v in columns.items() if i < len(v)} for i in range(n)]


class RequestRows:
    """Mixin giving an adapter the shared request-row extraction."""

    def request_rows(self, request_body: bytes) -> list[Row]:
        """The request's rows as feature dicts ([] when the body is not JSON)."""
        try:
            doc = load_body(request_body)
        except (ValueError, TypeError):  # not JSON, or binary tensors that do not fit
            return []
        return rows_from_request(doc)

    def rows_from_json(self, request: object) -> list[Row]:
        """Rows of an already decoded request body."""
        return rows_from_request(request)
