"""Slice values per row: which country, tenant or age band each compared row belongs to.

A `[[slices]]` source is `header:Name` (case-insensitive; one value broadcast to every row of
the request) or a JSON path. How a path maps to rows:
- a path with `[*]` is evaluated against the whole request and must yield one value per
  row (`$.instances[*].country`); a single match is broadcast, any other count is missing;
- a path without a wildcard is first evaluated against each row's feature dict (the
  adapter's `request_rows`: `$.country`, `$['input-0'][3]`); when no row has it, it is
  evaluated against the whole request and the one value is broadcast to every row
  (`$.parameters.tenant`, `$.inputs[0].country` -> the first row's value for all rows).
Values become text: strings as they are (cut at 100 characters), numbers without a
trailing `.0`, lists and dicts as compact JSON. Absent, null or empty values are
`(missing)`. With `bins = [18, 35, 65]`, numbers map to `<18`, `[18, 35)`, `[35, 65)`,
`>=65`, and a value that is no number to `(invalid)`.

The number of distinct values per slice is capped (MAX_VALUES); values beyond it fold
into `other`. The set of admitted values is shared by every worker, so the cap lives with
the caller (Redis); `fold_value` is the pure rule it applies.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Set
from dataclasses import dataclass

from analysis.jsonpath import JsonPath, JsonPathError, compile_path
from common.errors import ConfigError
from common.settings import SliceSettings
from common.slice_text import MAX_CHARS, MISSING, number_text, value_text

INVALID = "(invalid)"  # a binned slice's value is not a number
OTHER = "other"
RESERVED = frozenset({MISSING, INVALID, OTHER})
MAX_VALUES = 50
_ABSENT = object()


def fold_value(value: str, admitted: Set[str], cap: int = MAX_VALUES) -> str | None:
    """The value to count for `value` given the values already admitted for its slice.

    Returns `value` when it is admitted already or reserved (`(missing)`, `(invalid)`,
    `other`: they never use up the cap), `other` when `cap` values are admitted, and None
    when there is room: the caller admits it (atomically, where workers share the set, for
    example a Redis script doing SCARD < cap then SADD) and counts the value itself, or
    counts `other` if another worker filled the set first.
    """
    if value in admitted or value in RESERVED:
        return value
    return OTHER if len(admitted) >= cap else None


def fold_local(value: str, admitted: set[str], cap: int = MAX_VALUES) -> str:
    """`fold_value` for a single process: admits new values into `admitted` itself."""
    folded = fold_value(value, admitted, cap)
    if folded is None:
        admitted.add(value)
        return value
    return folded


def _num(x: float) -> str:
    return number_text(x)


def bin_labels(bins: tuple[float, ...]) -> tuple[str, ...]:
    """Labels of the len(bins) + 1 intervals: `<b0`, `[b0, b1)`, ..., `>=bk`."""
    edges = [_num(float(b)) for b in bins]
    inner = [f"[{lo}, {hi})" for lo, hi in itertools.pairwise(edges)]
    return (f"<{edges[0]}", *inner, f">={edges[-1]}")


@dataclass(frozen=True)
class _Spec:
    name: str
    header: str | None  # lower-cased header name, for header:X sources
    path: JsonPath | None
    bins: tuple[float, ...]
    labels: tuple[str, ...]

    @classmethod
    def build(cls, sl: SliceSettings) -> _Spec:
        if sl.source.startswith("header:"):
            header = sl.source[len("header:") :].strip().lower()
            return cls(sl.name, header, None, sl.bins, bin_labels(sl.bins) if sl.bins else ())
        try:
            path = compile_path(sl.source)
        except JsonPathError as exc:
            raise ConfigError(f"slices.{sl.name}.from", sl.source, str(exc)) from None
        return cls(sl.name, None, path, sl.bins, bin_labels(sl.bins) if sl.bins else ())

    def label(self, value: object) -> str:
        if not self.bins:
            return value_text(value)
        number = _as_number(value)
        if number is None:
            return MISSING if value_text(value) == MISSING else INVALID
        return self.labels[bisect.bisect_right(self.bins, number)]


def _as_number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


class SliceExtractor:
    """Evaluates the configured slices for every row of a request."""

    def __init__(self, slices: tuple[SliceSettings, ...]) -> None:
        self._specs = tuple(_Spec.build(s) for s in slices)
        self._headers = any(s.header is not None for s in self._specs)

    @property
    def names(self) -> tuple[str, ...]:
        """The configured slice names, in config order."""
        return tuple(s.name for s in self._specs)

    def row_values(
        self,
        request_rows: list[dict[str, object]],
        request_json: object | None,
        headers: dict[str, str],
        n_rows: int,
    ) -> list[dict[str, str]]:
        """One {slice name: value text} dict per row (n_rows of them)."""
        out: list[dict[str, str]] = [{}] if n_rows == 1 else [{} for _ in range(n_rows)]
        if not self._specs or n_rows <= 0:
            return out
        lowered = {k.lower(): v for k, v in headers.items()} if self._headers else headers
        for spec in self._specs:
            raw = _raw_values(spec, request_rows, request_json, lowered, n_rows)
            if n_rows == 1:  # the usual request: one row
                value = raw[0]
                if type(value) is str and value and not spec.bins:  # label(), inline
                    out[0][spec.name] = value[:MAX_CHARS]
                else:
                    out[0][spec.name] = spec.label(value)
                continue
            for row, value in zip(out, raw, strict=True):
                row[spec.name] = spec.label(value)
        return out


def _raw_values(
    spec: _Spec,
    rows: list[dict[str, object]],
    request_json: object | None,
    headers: dict[str, str],
    n_rows: int,
) -> list[object]:
    if spec.header is not None:
        return [headers.get(spec.header)] * n_rows
    path = spec.path
    if path is None:  # unreachable: _Spec.build sets a header or a path
        return [None] * n_rows
    if path.has_wildcard:
        matches = path.find(request_json) if request_json is not None else []
        if len(matches) == n_rows:
            return matches
        return matches * n_rows if len(matches) == 1 else [None] * n_rows
    per_row = [path.first(row, _ABSENT) for row in rows]
    if any(v is not _ABSENT for v in per_row):
        per_row = [None if v is _ABSENT else v for v in per_row]
        if len(per_row) == 1:
            return per_row * n_rows
        return (per_row + [None] * n_rows)[:n_rows]
    value = path.first(request_json) if request_json is not None else None
    return [value] * n_rows
