"""A small JSONPath subset, compiled once and evaluated in the worker's hot loop.

Supported: `$` (the root), `.name`, `['name']` / `["name"]`, `[N]` (negative counts from
the end), `[*]` and `.*` (every element or value). That covers configured label / proba /
score paths and slice sources; filters and recursive descent are deliberately absent.

Evaluation never raises: a step that does not apply (a key on a list, an index out of
range) simply yields no match. An index step on a dict also tries the key `str(N)`, so a
row built from a list (`{"0": ..., "1": ...}`) can be addressed as `$[1]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from common.errors import DecodeError

_MISSING = object()
# One step at a time: .name | .* | [*] | [N] | ['name'] | ["name"]
_STEP_RE = re.compile(
    r"""\.(?P<dotname>[\w$@\-]+|\*)"""
    r"""|\[\s*(?P<index>-?\d+)\s*\]"""
    r"""|\[\s*(?P<star>\*)\s*\]"""
    r"""|\[\s*'(?P<sq>(?:[^'\\]|\\.)*)'\s*\]"""
    r"""|\[\s*"(?P<dq>(?:[^"\\]|\\.)*)"\s*\]"""
)
_WILD = ("*", None)


class JsonPathError(DecodeError):
    """A path uses syntax outside the supported subset."""


@dataclass(frozen=True, slots=True)
class JsonPath:
    """A compiled path: a tuple of steps, each ("key", name), ("index", n) or ("*", None)."""

    text: str
    steps: tuple[tuple[str, object], ...]

    @property
    def has_wildcard(self) -> bool:
        """True when the path can match many values (one per element of a list)."""
        return _WILD in self.steps

    def find(self, doc: object) -> list[object]:
        """Every value the path matches in `doc`, in document order."""
        steps, node, done = self.steps, doc, 0
        for kind, arg in steps:  # up to the first wildcard there is one node at most
            if kind == "*":
                break
            if kind == "key" and type(node) is dict:  # _step_one's usual case, inline
                node = node.get(arg, _MISSING)
            else:
                node = _step_one(kind, arg, node)
            if node is _MISSING:
                return []
            done += 1
        rest = steps[done:]
        if len(rest) == 1:  # the usual `...[*]`: one wildcard, the last step
            return _apply(rest[0], node)
        current = [node]
        for step in rest:
            current = [v for node in current for v in _apply(step, node)]
            if not current:
                break
        return current

    def first(self, doc: object, default: object = None) -> object:
        """The first match, or `default` when nothing matches."""
        value = self._single(doc) if not self.has_wildcard else _MISSING
        if value is _MISSING:
            matches = self.find(doc)
            return matches[0] if matches else default
        return value

    def _single(self, doc: object) -> object:
        """Fast path for wildcard-free paths: no intermediate lists."""
        node = doc
        for kind, arg in self.steps:
            node = _step_one(kind, arg, node)
            if node is _MISSING:
                return _MISSING
        return node


def _step_one(kind: str, arg: object, node: object) -> object:
    if kind == "key":
        return node.get(arg, _MISSING) if isinstance(node, dict) else _MISSING
    if isinstance(node, list):
        index = int(arg)  # type: ignore[call-overload]
        return node[index] if -len(node) <= index < len(node) else _MISSING
    if isinstance(node, dict):
        return node.get(str(arg), _MISSING)
    return _MISSING


def _apply(step: tuple[str, object], node: object) -> list[object]:
    kind, arg = step
    if kind == "*":
        if isinstance(node, list):
            return list(node)
        return list(node.values()) if isinstance(node, dict) else []
    value = _step_one(kind, arg, node)
    return [] if value is _MISSING else [value]


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


@lru_cache(maxsize=1024)
def compile_path(text: str) -> JsonPath:
    """Parse `text` (it must start with `$`); raise JsonPathError naming the bad part."""
    source = text.strip()
    if not source.startswith("$"):
        raise JsonPathError(f"{text!r}: a JSON path starts with '$'")
    steps: list[tuple[str, object]] = []
    pos = 1
    while pos < len(source):
        match = _STEP_RE.match(source, pos)
        if match is None:
            raise JsonPathError(f"{text!r}: cannot parse from {source[pos:]!r}")
        steps.append(_step_from(match))
        pos = match.end()
    return JsonPath(text, tuple(steps))


def _step_from(match: re.Match[str]) -> tuple[str, object]:
    groups = match.groupdict()
    if groups["dotname"] is not None:
        name = groups["dotname"]
        return _WILD if name == "*" else ("key", name)
    if groups["index"] is not None:
        return ("index", int(groups["index"]))
    if groups["star"] is not None:
        return _WILD
    quoted = groups["sq"] if groups["sq"] is not None else groups["dq"]
    return ("key", _unescape(quoted or ""))
