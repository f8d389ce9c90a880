"""A raw slice value as text, shared by the worker's slices and the proxy's strata.

A stratum read from a JSON body field (`[[strata]] from = "$.tenant"`) must name its value
exactly as the slice reading the same field does, or the report would weight back the
wrong rows; the proxy must not import analysis, so the rule lives here.
"""

from __future__ import annotations

import math

import orjson

MISSING = "(missing)"
MAX_CHARS = 100


def value_text(value: object) -> str:
    """Strings as they are (cut at MAX_CHARS), numbers without a trailing `.0`, booleans
    as true/false, lists and dicts as compact JSON; absent, null, empty or NaN: MISSING."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, str):
        return value[:MAX_CHARS]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return number_text(float(value)) if isinstance(value, float) else str(value)
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()[:MAX_CHARS]
    except (TypeError, orjson.JSONEncodeError):
        return str(value)[:MAX_CHARS]


def number_text(x: float) -> str:
    """3.0 -> '3', 0.5 -> '0.5'."""
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)
