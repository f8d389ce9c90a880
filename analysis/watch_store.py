"""The live watch's state in Redis: per time bucket, mergeable counts of what was watched.

One hash per bucket (`Keys.watch_bucket(start)`, indexed in `Keys.watch_index()`, rolled
up into hourly hashes `h<start>` like the pair buckets) holds three `WatchState`s under a
one-letter tag — `i` the request's features, `o` the primary's answers (class,
confidence, margin, score), `t` its latency in ms — and the labels joined to watched
answers (`l`). Fields:

- `<tag>#<name>`: a scalar (req, rows, unreadable, over_cap, errors, nf: features kept);
- `<tag><len>:<name><part>`: a feature's count, where `<len>` is the byte length of the
  name (so any name, ':' and control characters included, decodes unambiguously) and
  `<part>` is p (present), n (null), x (NaN/inf), i (invalid), s (sum), `<`/`>` (min/max),
  k (categories kept), `b<bin>` (a bin of watch_state.EDGES) or `c<value>` (a category);
- `l#n`, `l#right`, `l#t:<class>`, `l#r:<class>`: labelled answers, right ones, per class.

Caps are applied in Redis (common/lua/watchmerge.lua), so a bucket holds at most
`max_features` features per tag and `max_categories` values per feature whatever many
batches, workers or hostile clients add to it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from typing import Any

from analysis.watch_state import N_BINS, OTHER, FeatureState, WatchState

TAGS = ("i", "o", "t")  # inputs, outputs, latency
SCALARS = ("req", "rows", "unreadable", "over_cap", "errors")
LATENCY = "latency_ms"


def feature_field(name: str) -> bytes:
    """`<len>:<name>`: the feature's prefix in a bucket hash (UTF-8, never ambiguous)."""
    raw = name.encode("utf-8", "replace")
    return b"%d:%s" % (len(raw), raw)


def _scalars(tag: str, state: WatchState) -> list[tuple[str, int]]:
    values = (state.requests, state.rows, state.unreadable, state.over_cap, state.errors)
    return [(f"{tag}#{name}", n) for name, n in zip(SCALARS, values, strict=True) if n]


def _finite(x: float) -> str:
    return repr(x) if math.isfinite(x) else ""


def _feature_args(tag: str, name: str, state: FeatureState) -> list[Any]:
    total = state.total if math.isfinite(state.total) else 0.0
    args: list[Any] = [
        tag, feature_field(name), state.present, state.null, state.nan, state.invalid,
        repr(total) if total else "0", _finite(state.low), _finite(state.high),
        len(state.numeric), *chain.from_iterable(sorted(state.numeric.items())),
        len(state.categories), *chain.from_iterable(state.categories.items()),
    ]  # fmt: skip
    return args


def payload(states: Mapping[str, WatchState], extra: Iterable[tuple[str, int]] = ()) -> list[Any]:
    """watchmerge.lua's payload for one bucket: `states` by tag, plus `extra` scalars."""
    scalars = [*chain.from_iterable(_scalars(t, s) for t, s in states.items()), *extra]
    features = [
        _feature_args(tag, name, fs)
        for tag, state in states.items()
        for name, fs in state.features.items()
    ]
    return [
        len(scalars), *chain.from_iterable(scalars),
        len(features), *chain.from_iterable(features),
    ]  # fmt: skip


@dataclass
class Labels:
    """Labelled watched answers in a window: how many, how many right, per true class."""

    n: int = 0
    right: int = 0
    per_class: dict[str, list[int]] = field(default_factory=dict)  # class -> [n, right]

    def merge(self, other: Labels, max_classes: int = 1000) -> None:
        self.n += other.n
        self.right += other.right
        for cls, (n, r) in other.per_class.items():
            if cls not in self.per_class and len(self.per_class) >= max_classes:
                cls = OTHER
            mine = self.per_class.setdefault(cls, [0, 0])
            mine[0] += n
            mine[1] += r

    def scalars(self) -> list[tuple[str, int]]:
        """As `l#` scalars for a rollup payload."""
        out = [("l#n", self.n), ("l#right", self.right)]
        for cls, (n, r) in self.per_class.items():
            out += [(f"l#t:{cls}", n), (f"l#r:{cls}", r)]
        out.append(("l#nc", len(self.per_class)))
        return [(k, v) for k, v in out if v]


@dataclass
class Bucket:
    """One bucket (or hour) read back: its states by tag and its labels."""

    start: int
    states: dict[str, WatchState]
    labels: Labels = field(default_factory=Labels)
    join_full: int = 0

    @property
    def requests(self) -> int:
        return self.states["i"].requests

    def merge(self, other: Bucket) -> None:
        for tag in TAGS:
            self.states[tag].merge(other.states[tag])
        self.labels.merge(other.labels)
        self.join_full += other.join_full


def empty_states(max_features: int, max_categories: int) -> dict[str, WatchState]:
    return {t: WatchState(max_features=max_features, max_categories=max_categories) for t in TAGS}


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _number(raw: bytes) -> float:
    try:
        return float(raw)
    except ValueError:
        return 0.0


def _split_feature(rest: bytes) -> tuple[str, bytes] | None:
    """`<len>:<name><part>` -> (name, part); None when the field is not one."""
    length, sep, tail = rest.partition(b":")
    if not sep or not length.isdigit() or int(length) > len(tail):
        return None
    n = int(length)
    return _text(tail[:n]), tail[n:]


def decode_bucket(start: int, fields: Mapping[bytes, bytes], max_features: int,
                  max_categories: int) -> Bucket:  # fmt: skip
    """A bucket hash as states; hostile or unknown fields are skipped, never raised on."""
    bucket = Bucket(start, empty_states(max_features, max_categories))
    states = bucket.states
    for raw_key, value in fields.items():
        key = raw_key if isinstance(raw_key, bytes) else str(raw_key).encode()
        kind, tag, name, arg = _parse_field(key)
        if not kind:
            continue
        number = _number(value if isinstance(value, bytes) else str(value).encode())
        if kind == "l":
            _label_field(bucket, arg, int(number))
            continue
        if kind == "S":
            setattr(states[tag], arg, int(number))
            continue
        features = states[tag].features
        state = features.get(name)
        if state is None:
            state = features[name] = FeatureState()
        if kind == "b":
            state.numeric[arg] = state.numeric.get(arg, 0) + int(number)
        elif kind == "c":
            state.categories[arg] = int(number)
        elif kind == "=":
            setattr(state, arg, int(number) if arg != "total" else number)
        elif kind == "<":
            state.low = number
        elif kind == ">":
            state.high = number
    return bucket


_PARTS = {b"p": "present", b"n": "null", b"x": "nan", b"i": "invalid", b"s": "total"}
Field = tuple[str, str, str, Any]  # kind, tag, feature name, what the kind needs


@lru_cache(maxsize=1 << 16)
def _parse_field(key: bytes) -> Field:
    """What a field holds, cached (the same fields recur in every bucket; a few per feature
    bin and category): kind b (a bin: its index), c (a category: its text), = (a count or
    the sum: the attribute), < / > (min / max), S (a scalar: the attribute), l (labels: the
    rest of the field), or "" (unknown, skipped)."""
    tag, rest = _text(key[:1]), key[1:]
    if tag == "l":
        return "l", tag, "", rest
    if tag not in TAGS:
        return "", "", "", None
    if rest.startswith(b"#"):
        attr = _SCALAR_ATTRS.get(_text(rest[1:]))
        return ("S", tag, "", attr) if attr is not None else ("", "", "", None)
    split = _split_feature(rest)
    if split is None:
        return "", "", "", None
    name, part = split
    kind, arg = part[:1], part[1:]
    if kind == b"b" and arg.isdigit() and int(arg) < N_BINS:
        return "b", tag, name, int(arg)
    if kind == b"c":
        return "c", tag, name, _text(arg)
    if part in _PARTS:
        return "=", tag, name, _PARTS[part]
    if part in (b"<", b">"):
        return part.decode(), tag, name, None
    return "", "", "", None


_SCALAR_ATTRS = {"req": "requests", "rows": "rows", "unreadable": "unreadable",
                 "over_cap": "over_cap", "errors": "errors"}  # fmt: skip


def _label_field(bucket: Bucket, rest: bytes, n: int) -> None:
    labels = bucket.labels
    if rest == b"#n":
        labels.n = n
    elif rest == b"#right":
        labels.right = n
    elif rest == b"#join_full":
        bucket.join_full = n
    elif rest.startswith((b"#t:", b"#r:")):
        cls = _text(rest[3:])
        counts = labels.per_class.setdefault(cls, [0, 0])
        counts[0 if rest[1:2] == b"t" else 1] = n
