"""Slice values per row: JSON paths (per row and broadcast), headers, bins, missing, folding."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from analysis.adapters import select_adapter
from analysis.jsonpath import JsonPathError, compile_path
from analysis.slices import (
    INVALID,
    MISSING,
    OTHER,
    SliceExtractor,
    bin_labels,
    fold_local,
    fold_value,
    value_text,
)
from common.errors import ConfigError
from common.settings import OutputSettings, SliceSettings

BODIES = Path(__file__).parent / "fixtures" / "bodies"
AUTO = select_adapter(OutputSettings())


def extract(
    slices: list[SliceSettings], request: bytes, headers: dict[str, str] | None = None
) -> list[dict[str, str]]:
    doc = orjson.loads(request)
    rows = AUTO.rows_from_json(doc)
    return SliceExtractor(tuple(slices)).row_values(rows, doc, headers or {}, max(len(rows), 1))


def test_bare_feature_path_per_row_for_every_request_format() -> None:
    country = SliceSettings(name="country", source="$.country")
    for name in (
        "mlflow_request_split.json",
        "oip_v2_request_columns.json",
        "tfserving_request_dicts.json",
    ):
        values = [row["country"] for row in extract([country], (BODIES / name).read_bytes())]
        assert values[:2] == ["DE", "FR"], name


def test_wildcard_path_yields_one_value_per_row() -> None:
    sl = SliceSettings(name="c", source="$.instances[*].country")
    rows = extract([sl], (BODIES / "tfserving_request_dicts.json").read_bytes())
    assert [r["c"] for r in rows] == ["DE", "FR", "US"]


def test_plain_request_level_path_is_broadcast() -> None:
    tenant = SliceSettings(name="tenant", source="$.parameters.tenant")
    first = SliceSettings(name="first", source="$.inputs[0].country")
    request = {
        "parameters": {"tenant": "acme"},
        "inputs": [{"country": "DE"}, {"country": "FR"}],
    }
    rows = extract([tenant, first], orjson.dumps(request))
    assert [r["tenant"] for r in rows] == ["acme", "acme"]
    # A path through the row list without [*] names one row: its value is broadcast.
    assert [r["first"] for r in rows] == ["DE", "DE"]


def test_positional_feature_of_a_list_row() -> None:
    sl = SliceSettings(name="petal", source="$[2]", bins=(2.0, 5.0))
    rows = extract([sl], (BODIES / "tfserving_request_instances.json").read_bytes())
    assert [r["petal"] for r in rows] == ["<2", "[2, 5)", ">=5"]
    tensor = SliceSettings(name="petal", source="$['input-0'][2]", bins=(2.0, 5.0))
    rows = extract([tensor], (BODIES / "oip_v2_request_iris.json").read_bytes())
    assert [r["petal"] for r in rows] == ["<2", "[2, 5)", ">=5"]


def test_headers_are_case_insensitive_and_broadcast() -> None:
    sl = SliceSettings(name="tenant", source="header:X-Tenant")
    rows = extract([sl], (BODIES / "mlflow_request_split.json").read_bytes(), {"x-tenant": "t1"})
    assert [r["tenant"] for r in rows] == ["t1", "t1", "t1"]
    rows = extract([sl], (BODIES / "mlflow_request_split.json").read_bytes(), {})
    assert rows[0]["tenant"] == MISSING


def test_bins_missing_and_invalid_values() -> None:
    age = SliceSettings(name="age", source="$.age", bins=(18.0, 35.0, 65.0))
    request = {
        "dataframe_records": [
            {"age": 17},
            {"age": 18},
            {"age": 34.9},
            {"age": 65},
            {"age": "40"},
            {"age": "old"},
            {"age": None},
            {},
            {"age": True},
        ]
    }
    values = [r["age"] for r in extract([age], orjson.dumps(request))]
    assert values == [
        "<18",
        "[18, 35)",
        "[18, 35)",
        ">=65",
        "[35, 65)",
        INVALID,
        MISSING,
        MISSING,
        INVALID,
    ]


def test_wildcard_count_mismatch_is_missing_not_misaligned() -> None:
    sl = SliceSettings(name="c", source="$.meta.countries[*]")
    request = {"instances": [[1], [2], [3]], "meta": {"countries": ["DE", "FR"]}}
    rows = extract([sl], orjson.dumps(request))
    assert [r["c"] for r in rows] == [MISSING] * 3


def test_unparseable_request_gives_missing_for_every_row() -> None:
    ex = SliceExtractor((SliceSettings(name="c", source="$.country"),))
    assert ex.row_values([], None, {}, 2) == [{"c": MISSING}, {"c": MISSING}]
    assert ex.names == ("c",)


def test_value_text() -> None:
    assert value_text(3.0) == "3"
    assert value_text(2.5) == "2.5"
    assert value_text(False) == "false"
    assert value_text({"b": 1, "a": [1]}) == '{"a":[1],"b":1}'
    assert value_text("") == MISSING
    assert len(value_text("x" * 1000)) == 100
    assert bin_labels((0.5, 10.0)) == ("<0.5", "[0.5, 10)", ">=10")


def test_fold_value_caps_distinct_values() -> None:
    admitted = {f"v{i}" for i in range(3)}
    assert fold_value("v1", admitted, cap=3) == "v1"
    assert fold_value("new", admitted, cap=3) == OTHER
    assert fold_value(MISSING, admitted, cap=3) == MISSING
    assert fold_value("new", {"v0"}, cap=3) is None  # room: the caller admits it
    local: set[str] = set()
    folded = [fold_local(v, local, cap=2) for v in ["a", "b", "c", "a", "(missing)", "d"]]
    assert folded == ["a", "b", OTHER, "a", MISSING, OTHER]
    assert local == {"a", "b"}


def test_bad_slice_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="slices"):
        SliceExtractor((SliceSettings(name="c", source="$.a[?(@.b)]"),))


@pytest.mark.parametrize("path", ["a.b", "$.a[", "$..a", "$.a[1:2]"])
def test_unsupported_jsonpath_syntax(path: str) -> None:
    with pytest.raises(JsonPathError):
        compile_path(path)


def test_jsonpath_subset() -> None:
    doc = {"a": {"b": [{"c": 1}, {"c": 2}], "x y": 5}, "n": [10, 20, 30]}
    assert compile_path("$.a.b[*].c").find(doc) == [1, 2]
    assert compile_path("$.a['x y']").first(doc) == 5
    assert compile_path('$["n"][-1]').first(doc) == 30
    assert compile_path("$.n[7]").first(doc, "none") == "none"
    assert compile_path("$.a.*").find(doc) == [[{"c": 1}, {"c": 2}], 5]
    assert compile_path("$.a.b.c").find(doc) == []
    assert compile_path("$.a.b[*].c").has_wildcard
    assert not compile_path("$.a.b[0].c").has_wildcard
