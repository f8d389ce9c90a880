"""JsonPath.find walks the steps before the first wildcard without lists: the matches are
exactly those of the plain step-by-step evaluation, for any document and path."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.jsonpath import JsonPath, _apply

keys = st.sampled_from(["a", "b", "0", "1", "inputs", "data"])
docs = st.recursive(
    st.none() | st.integers(-3, 3) | st.text(max_size=2),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=25,
)
steps = st.lists(
    st.one_of(
        keys.map(lambda k: ("key", k)),
        st.integers(-3, 3).map(lambda n: ("index", n)),
        st.just(("*", None)),
    ),
    max_size=5,
)


def _reference(path: JsonPath, doc: object) -> list[object]:
    current = [doc]
    for step in path.steps:
        current = [v for node in current for v in _apply(step, node)]
        if not current:
            break
    return current


@settings(max_examples=400, deadline=None)
@given(doc=docs, path_steps=steps)
def test_find_matches_the_step_by_step_evaluation(doc: Any, path_steps: list[Any]) -> None:
    path = JsonPath("$", tuple(path_steps))
    assert path.find(doc) == _reference(path, doc)


def test_a_wildcard_after_keys_and_indexes() -> None:
    path = JsonPath("$", (("key", "inputs"), ("index", 1), ("key", "data"), ("*", None)))
    doc = {"inputs": [{"data": [0]}, {"data": ["FR", "DE"]}]}
    assert path.find(doc) == ["FR", "DE"]
    assert path.find({"inputs": [{"data": [0]}]}) == []
