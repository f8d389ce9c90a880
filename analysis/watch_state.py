"""Mergeable per-feature state of watched inputs: what a window (or a training set) held.

The same state describes live traffic and a training profile, so a reference is simply
another state: a pinned window, last week, or `shadowtrial profile` of the training data.
Every part is an additive count, so two states merge by adding (buckets, replicas,
workers), and memory is bounded whatever traffic sends:

- numbers fall into one fixed histogram shared by every feature and every process
  (`EDGES`: zero, then 40 log-spaced bins per decade, each about 6% wide, from 1e-4 to
  1e9 on each side; anything beyond is clamped into the outer bins, and still counted
  out of range against a profile through the recorded min and max);
- text and booleans are counted per value up to `max_categories` per feature, the rest
  under `OTHER` (the count of distinct values beyond the cap is not kept: unbounded);
- None is missing, NaN and infinities are counted apart, anything else (lists, objects)
  is `invalid`; a feature absent from a row is missing (rows minus the values seen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OTHER = "<other>"
DEFAULT_MAX_CATEGORIES = 100
DEFAULT_MAX_FEATURES = 64
PROFILE_VERSION = 1

_DECADES = np.arange(-4.0, 9.0 + 1e-9, 0.025)
_POSITIVE = 10.0**_DECADES
EDGES: np.ndarray = np.concatenate([-_POSITIVE[::-1], [0.0], _POSITIVE])
N_BINS = len(EDGES) - 1


def bin_index(value: float) -> int:
    """The bin of `value` in EDGES (values beyond the outer edges go to the outer bins)."""
    i = int(np.searchsorted(EDGES, value, side="right")) - 1
    return min(max(i, 0), N_BINS - 1)


def _as_float(value: int | float) -> float:
    """A JSON number as a float; an integer beyond a float's range is an infinity."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


@dataclass
class FeatureState:
    """Counts for one feature; `merge` adds another state of the same feature."""

    numeric: dict[int, int] = field(default_factory=dict)  # bin index -> count (sparse)
    categories: dict[str, int] = field(default_factory=dict)
    present: int = 0  # values seen (everything but an absent key)
    null: int = 0
    nan: int = 0
    invalid: int = 0
    low: float = math.inf
    high: float = -math.inf
    total: float = 0.0  # sum of the finite numbers: an exact mean beside the histogram

    def add(self, value: object, max_categories: int) -> None:
        """Count one value from a row (hostile input: any JSON value)."""
        self.present += 1
        if value is None:
            self.null += 1
        elif isinstance(value, bool):
            self._add_category(str(value).lower(), max_categories)
        elif isinstance(value, str):
            self._add_category(value, max_categories)
        elif isinstance(value, int | float):
            self._add_number(_as_float(value))
        else:
            self.invalid += 1

    def _add_number(self, x: float) -> None:
        if not math.isfinite(x):
            self.nan += 1
            return
        i = bin_index(x)
        self.numeric[i] = self.numeric.get(i, 0) + 1
        self.low, self.high = min(self.low, x), max(self.high, x)
        self.total += x

    def _add_category(self, text: str, max_categories: int) -> None:
        key = text if text in self.categories or len(self.categories) < max_categories else OTHER
        self.categories[key] = self.categories.get(key, 0) + 1

    @property
    def n_numeric(self) -> int:
        return sum(self.numeric.values())

    @property
    def n_categorical(self) -> int:
        return sum(self.categories.values())

    def mean(self) -> float:
        """The exact mean of the finite numbers (nan when there are none)."""
        n = self.n_numeric
        return self.total / n if n else math.nan

    def kind(self) -> str:
        """`numeric` when numbers outnumber text values, else `categorical`."""
        return "numeric" if self.n_numeric >= max(self.n_categorical, 1) else "categorical"

    def histogram(self) -> np.ndarray:
        counts = np.zeros(N_BINS)
        for i, c in self.numeric.items():
            counts[i] = c
        return counts

    def merge(self, other: FeatureState, max_categories: int) -> None:
        for i, c in other.numeric.items():
            self.numeric[i] = self.numeric.get(i, 0) + c
        for key, c in other.categories.items():
            if key not in self.categories and len(self.categories) >= max_categories:
                key = OTHER
            self.categories[key] = self.categories.get(key, 0) + c
        self.present += other.present
        self.null += other.null
        self.nan += other.nan
        self.invalid += other.invalid
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)
        self.total += other.total

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": {str(i): c for i, c in sorted(self.numeric.items())},
            "categories": self.categories,
            "present": self.present, "null": self.null, "nan": self.nan,
            "invalid": self.invalid,
            "min": self.low if math.isfinite(self.low) else None,
            "max": self.high if math.isfinite(self.high) else None,
            "sum": self.total,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FeatureState:
        low, high = doc.get("min"), doc.get("max")
        numeric = {int(i): int(c) for i, c in doc.get("numeric", {}).items()}
        if any(not 0 <= i < N_BINS for i in numeric):
            raise ValueError(f"histogram bins must be in [0, {N_BINS})")
        return cls(
            numeric=numeric,
            categories={str(k): int(c) for k, c in doc.get("categories", {}).items()},
            present=int(doc.get("present", 0)), null=int(doc.get("null", 0)),
            nan=int(doc.get("nan", 0)), invalid=int(doc.get("invalid", 0)),
            low=math.inf if low is None else float(low),
            high=-math.inf if high is None else float(high),
            total=float(doc.get("sum", 0.0)),
        )  # fmt: skip


@dataclass
class WatchState:
    """Every feature of a window (or a training set), plus what did not fit the caps."""

    max_features: int = DEFAULT_MAX_FEATURES
    max_categories: int = DEFAULT_MAX_CATEGORIES
    requests: int = 0
    rows: int = 0
    features: dict[str, FeatureState] = field(default_factory=dict)
    over_cap: int = 0  # values of features beyond max_features (counted, not kept)
    unreadable: int = 0  # requests whose rows could not be told
    errors: int = 0  # answers with an error status (outputs only)
    kinds: dict[str, str] = field(default_factory=dict)  # declared kinds (a profile's)

    def add_row(self, row: dict[str, object]) -> None:
        """Count one row: feature name -> value."""
        self.rows += 1
        for name, value in row.items():
            state = self.features.get(name)
            if state is None:
                if len(self.features) >= self.max_features:
                    self.over_cap += 1
                    continue
                state = self.features[name] = FeatureState()
            state.add(value, self.max_categories)

    def merge(self, other: WatchState) -> None:
        self.requests += other.requests
        self.rows += other.rows
        self.over_cap += other.over_cap
        self.unreadable += other.unreadable
        self.errors += other.errors
        for name, state in other.features.items():
            mine = self.features.get(name)
            if mine is None and len(self.features) >= self.max_features:
                self.over_cap += state.present
            elif mine is None:
                self.features[name] = FeatureState.from_dict(state.to_dict())
            else:
                mine.merge(state, self.max_categories)

    def kind(self, name: str) -> str:
        return self.kinds.get(name) or self.features[name].kind()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PROFILE_VERSION,
            "max_features": self.max_features, "max_categories": self.max_categories,
            "requests": self.requests, "rows": self.rows, "over_cap": self.over_cap,
            "unreadable": self.unreadable, "errors": self.errors,
            "features": {
                name: {"kind": self.kind(name), **state.to_dict()}
                for name, state in self.features.items()
            },
        }  # fmt: skip

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> WatchState:
        """A state from its JSON (a profile file); a wrong version is a ValueError."""
        if doc.get("version") != PROFILE_VERSION:
            raise ValueError(f"profile version {doc.get('version')!r}, expected {PROFILE_VERSION}")
        features = doc.get("features", {})
        return cls(
            max_features=int(doc.get("max_features", DEFAULT_MAX_FEATURES)),
            max_categories=int(doc.get("max_categories", DEFAULT_MAX_CATEGORIES)),
            requests=int(doc.get("requests", 0)), rows=int(doc.get("rows", 0)),
            over_cap=int(doc.get("over_cap", 0)), unreadable=int(doc.get("unreadable", 0)),
            errors=int(doc.get("errors", 0)),
            features={str(k): FeatureState.from_dict(v) for k, v in features.items()},
            kinds={str(k): str(v.get("kind")) for k, v in features.items() if v.get("kind")},
        )  # fmt: skip
