"""The built-in skew slice: was a pair's request like the training data, or not?

With a training profile (`[watch] profile`, written by `shadowtrial profile`), every
compared row gets one more slice value under `SKEW_SLICE`, from its own features
(analysis.watch_features names them as the watch does):

- `unseen category`: a categorical feature holds a value training never had;
- `out of range`: otherwise, a numeric feature lies outside training's [min, max];
- `as in training`: neither (features the profile does not know are not judged).

The report tests this slice with the same machinery as configured slices (a part whose
agreement is significantly and materially below the rest is flagged), so a candidate's
disagreement that concentrates on inputs training never saw is named as such
(analysis.report `skew`). A feature whose profile categories reached the cap (`<other>`)
has no complete list of known values, so it is never called unseen.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.watch_features import feature_rows
from analysis.watch_state import OTHER, WatchState
from common.errors import ShadowtrialError
from common.settings import Settings

log = logging.getLogger("shadowtrial.worker")

# ':' cannot appear in a configured slice name, so this one never collides with them.
SKEW_SLICE = "watch:skew"
UNSEEN = "unseen category"
OUT_OF_RANGE = "out of range"
WITHIN = "as in training"
UNKNOWN = "(missing)"  # the request's features could not be read (shared reserved value)
SKEWED = (UNSEEN, OUT_OF_RANGE)
_RANK = {WITHIN: 0, OUT_OF_RANGE: 1, UNSEEN: 2}
REFRESH_S = 60.0  # how often a worker re-reads the profile (an upload takes effect then)


@dataclass(frozen=True)
class SkewClassifier:
    """What training saw, per feature: its categories, or its numeric range."""

    categories: Mapping[str, frozenset[str]]
    ranges: Mapping[str, tuple[float, float]]
    renames: Mapping[str, str]

    @classmethod
    def from_profile(
        cls, profile: WatchState, renames: Mapping[str, str] | None = None
    ) -> SkewClassifier:
        categories, ranges = {}, {}
        for name, state in profile.features.items():
            if profile.kind(name) == "categorical":
                if OTHER not in state.categories:  # a capped list cannot tell unseen values
                    categories[name] = frozenset(state.categories)
            elif math.isfinite(state.low) and math.isfinite(state.high):
                ranges[name] = (state.low, state.high)
        return cls(categories, ranges, dict(renames or {}))

    def row_label(self, row: Mapping[str, object]) -> str:
        """The row's skew value (the worse of unseen and out of range wins)."""
        out_of_range = False
        for name, value in row.items():
            known = self.categories.get(name)
            if known is not None and isinstance(value, str | bool):
                text = str(value).lower() if isinstance(value, bool) else value
                if text not in known:
                    return UNSEEN
            bounds = self.ranges.get(name)
            if bounds is not None and _outside(value, bounds):
                out_of_range = True
        return OUT_OF_RANGE if out_of_range else WITHIN

    def labels(self, request: object, n_rows: int) -> list[str]:
        """One value per compared row of the request; a request whose row count differs
        from the answer's gets its worst row's value on every row."""
        if request is None:
            return [UNKNOWN] * n_rows
        rows = [self.row_label(r) for r in feature_rows(request, self.renames)]
        if len(rows) == n_rows:
            return rows
        if not rows:
            return [UNKNOWN] * n_rows
        return [max(rows, key=_RANK.__getitem__)] * n_rows


def _outside(value: object, bounds: tuple[float, float]) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        x = float(value)
    except OverflowError:
        return True
    return math.isfinite(x) and not bounds[0] <= x <= bounds[1]


def renames_of(settings: Settings) -> dict[str, str]:
    """`[[features]]` entries that rename a derived feature (`from = "x[0]"`)."""
    out = {}
    for feature in getattr(settings, "features", ()) or ():
        source = str(getattr(feature, "source", ""))
        if source and not source.startswith(("$", "header:")):
            out[source] = str(feature.name)
    return out


def classifier(settings: Settings) -> SkewClassifier | None:
    """The classifier of `[watch] profile`, or None when there is no usable profile (a
    profile that cannot be read is logged once: the slice is left out, nothing stops)."""
    path = getattr(getattr(settings, "watch", None), "profile", None)
    if not path:
        return None
    from analysis.profile import ProfileError, load_profile

    try:
        profile = load_profile(Path(path))
    except ProfileError as exc:
        log.error("no skew slice: %s", exc)
        return None
    return SkewClassifier.from_profile(profile, renames_of(settings))


class SkewSource:
    """The worker's classifier of the current training profile, as the watch reads it:
    the one uploaded with `PUT /v1/watch/profile` first, else `[watch] profile`; re-read
    every REFRESH_S, the last good one kept while Redis cannot be read."""

    def __init__(
        self,
        client: Any,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.settings = settings
        self.clock = clock
        self._read_at = -math.inf
        self._current: SkewClassifier | None = None
        self._problem = ""

    def __call__(self) -> SkewClassifier | None:
        now = self.clock()
        if now - self._read_at < REFRESH_S:
            return self._current
        self._read_at = now
        from analysis.watch_live import load_profile_state

        try:
            profile, problem = load_profile_state(self.client, self.settings)
        except ShadowtrialError as exc:
            log.warning("skew slice: the profile cannot be read now (%s)", exc)
            return self._current
        if profile is None:
            if self.settings.watch.profile and problem != self._problem:
                log.error("no skew slice: %s", problem)  # once per distinct problem
            self._problem, self._current = problem, None
        else:
            self._current = SkewClassifier.from_profile(profile, renames_of(self.settings))
        return self._current


def skew_section(slices: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The report's `skew`: the skew slice's parts and whether disagreement concentrates
    on inputs unlike training (None when no pair was classified)."""
    parts = [r for r in slices if r.get("slice") == SKEW_SLICE]
    if not parts:
        return None
    skewed = [r for r in parts if r.get("value") in SKEWED]
    flagged = [r["value"] for r in skewed if r.get("flagged")]
    return {
        "slice": SKEW_SLICE,
        "parts": sorted(parts, key=lambda r: -_RANK.get(str(r.get("value")), -1)),
        "skewed_pairs": sum(int(r.get("pairs") or 0) for r in skewed),
        "concentrates": bool(flagged),
        "concentrated_on": flagged,
    }
