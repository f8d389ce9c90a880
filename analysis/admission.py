"""Slice admission, in one place: which slice values (and classes) are counted apart, the
rest fold into OTHER; at most MAX_VALUES per candidate and feature, decided once in Redis
(admit.lua). `fold_candidates` lists what a batch asks for, `Admission.prepare` decides it
in one round trip, `Admission.folder` answers the fold the counters use.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import redis

from analysis.slices import MAX_VALUES, OTHER, RESERVED
from analysis.summaries import LABEL_FEATURE, SEP, SEP_SHOWN, PairEvidence
from common.keys import Keys
from common.redis_client import store_errors
from common.scripts import SCRIPTS


def fold_candidates(evidence: Iterable[PairEvidence]) -> dict[str, set[str]]:
    """Every (feature -> raw values) the batch would count, for one admission round trip."""
    wanted: dict[str, set[str]] = defaultdict(set)
    labels: set[str] = set()
    for ev in evidence:
        if ev.primary_failure is not None:
            continue
        for values in ev.slice_rows:
            for f, v in values.items():
                wanted[f].add(v.replace(SEP, SEP_SHOWN))  # field_text, inline (every value)
        for p in ev.primary_rows:
            if p.label is not None:
                labels.add(p.label.replace(SEP, SEP_SHOWN))
        for row in ev.rows:
            if row.candidate.label is not None:
                labels.add(row.candidate.label.replace(SEP, SEP_SHOWN))
    if labels:  # a feature is asked for only with values
        wanted[LABEL_FEATURE] |= labels
    return wanted


class Admission:
    """Which slice values (and classes) are counted apart; the rest fold into OTHER.

    Backed by one Redis set per candidate and feature holding at most MAX_VALUES (50)
    values (reserved ones like `(missing)` never use the cap). Admission is permanent
    while the set lives, so this process caches both answers; only values it has never
    seen cost a (batched) round trip.
    """

    LOCAL_LIMIT = 100_000  # refused values remembered per feature before forgetting them

    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: int, cap: int = MAX_VALUES) -> None:
        self.client = client
        self.keys = keys
        self.ttl_s = ttl_s
        self.cap = cap
        self._script = SCRIPTS["admit"].register(client)
        self._known: dict[tuple[str, str], dict[str, bool]] = {}

    def prepare(self, candidate: str, wanted: dict[str, set[str]]) -> None:
        """Admit or refuse every value not decided yet, one script call per feature."""
        asks = []
        for feature, values in wanted.items():
            known = self._known.setdefault((candidate, feature), {})
            new = [v for v in values if v not in known and v not in RESERVED]
            if new:
                asks.append((feature, known, new))
        if not asks:
            return
        pipe = self.client.pipeline(transaction=False)
        for feature, _, new in asks:
            key = self.keys.admitted(candidate, feature)
            self._script.queue(pipe, values=key, cap=self.cap, ttl=self.ttl_s, asked=new)
        with store_errors(f"slice value admission failed for {candidate}"):
            answers = pipe.execute()
        for (_, known, new), answer in zip(asks, answers, strict=True):
            if len(known) > self.LOCAL_LIMIT:
                known.clear()
            known.update(zip(new, (bool(a) for a in answer), strict=True))

    def folder(self, candidate: str) -> Any:
        """fold(feature, value) -> value if admitted else OTHER (values must be prepared)."""
        known = self._known

        def fold(feature: str, value: str) -> str:
            if value in RESERVED:
                return value
            decided = known.get((candidate, feature))
            return value if decided is not None and decided.get(value, False) else OTHER

        return fold


def admitted_values(
    client: redis.Redis, keys: Keys, candidate: str, features: Iterable[str]
) -> dict[str, set[str]]:
    """The admitted set of each feature (for tests and diagnostics)."""
    pipe = client.pipeline(transaction=False)
    names = list(features)
    for f in names:
        pipe.smembers(keys.admitted(candidate, f))
    return {
        f: {v.decode() for v in members} for f, members in zip(names, pipe.execute(), strict=True)
    }


__all__ = ["Admission", "admitted_values", "fold_candidates"]
