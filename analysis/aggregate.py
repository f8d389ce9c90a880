"""Pipeline stage 3, aggregate: a batch's items into counter increments and extras.

One pass over the items: each adds to the batch's BatchDelta (a pair's evidence, a bad
record, a trimmed id); then the extras are gathered from what was understood: label-join
items (each answered row with a primary label) and drill-down samples (unparseable
answers, one contract example per kind, recent and divergent pairs). Pure: no Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from analysis import drilldown
from analysis.apply import BatchExtras
from analysis.decode import Item
from analysis.feedback import MAX_JOIN_ROWS, join_key, join_text
from analysis.summaries import BatchDelta, PairEvidence, bucket_start, slice_items
from common.keys import SAMPLES_KEPT

RECENT_PER_BATCH = 20  # pairs of each batch pushed to the `recent` drill-down list

Fold = Callable[[str, str], str]


def aggregate(
    items: Sequence[Item],
    fold: Fold,
    bucket_seconds: int,
    now: float,
    join_rows: int = MAX_JOIN_ROWS,
) -> tuple[BatchDelta, BatchExtras]:
    """The counters and extras of one batch (`fold` folds unadmitted slice values)."""
    delta = BatchDelta(bucket_seconds)
    for item in items:
        if item.trimmed:
            delta.add_trimmed(1, now)
        elif item.evidence is None:
            delta.add_bad(item.ts_ms)
        else:
            delta.add(item.evidence, fold)
    understood = [i for i in items if i.evidence is not None and not i.trimmed]
    extras = BatchExtras(joins=_joins(understood, bucket_seconds, join_rows))
    _diagnostics(extras, understood)
    _pair_samples(extras, understood, fold)
    return delta, extras


def _joins(
    items: Sequence[Item], bucket_seconds: int, join_rows: int
) -> list[tuple[str, str, int]]:
    """(join key, what waits for its label, bucket start) of each answered row (the first
    `worker.label_join_rows` of a batch; analysis.feedback.join_key)."""
    joins = []
    for item in items:
        ev = item.evidence
        if ev is None or ev.primary_failure is not None:
            continue
        bucket = bucket_start(ev.ts_ms, bucket_seconds)
        for k, (primary, candidate, confidences, scores) in enumerate(_row_labels(ev, join_rows)):
            value = join_text(bucket, primary, candidate, confidences, scores)
            joins.append((join_key(ev.request_id, k), value, bucket))
    return joins


Row = tuple[str, str | None, tuple[Any, Any], tuple[Any, Any]]


def _row_labels(ev: PairEvidence, join_rows: int) -> list[Row]:
    """(primary label, candidate label or None for an error, both confidences, both
    scores) per row, up to the first row with neither a label nor a score."""
    out: list[Row] = []
    failed = bool(ev.candidate_error) or not ev.rows
    for k, p in enumerate(ev.primary_rows[:join_rows]):
        if p.label is None and p.score is None:
            break
        c = None if failed or k >= len(ev.rows) else ev.rows[k].candidate
        c_label = None if c is None else (c.label if c.label is not None else "")
        out.append((p.label or "", c_label, (p.confidence, _get(c, "confidence")),
                    (p.score, _get(c, "score"))))  # fmt: skip
    return out


def _get(c: Any, name: str) -> Any:
    return None if c is None else getattr(c, name)


def _diagnostics(extras: BatchExtras, items: Sequence[Item]) -> None:
    """Unparseable answers, and one contract example per kind and batch."""
    seen: set[str] = set()
    for item in items:
        rec = item.record
        assert rec is not None
        if item.unparseable is not None:
            sample = drilldown.unparseable_sample(rec, *item.unparseable)
            extras.samples["unparseable"].append(drilldown.encode(sample))
        for diff in item.contract:
            if diff.kind not in seen:
                seen.add(diff.kind)
                sample = drilldown.contract_sample(rec, diff.kind, diff.detail)
                extras.samples["contract"].append(drilldown.encode(sample))


def _pair_samples(extras: BatchExtras, items: Sequence[Item], fold: Fold) -> None:
    """The batch's most recent pairs, and its newest divergent ones."""
    understood = [i for i in items if i.evidence.primary_failure is None]
    divergent = [i for i in understood if not all(i.evidence.row_agreement())][-SAMPLES_KEPT:]
    for kind, chosen in (("recent", understood[-RECENT_PER_BATCH:]), ("divergent", divergent)):
        for item in chosen:
            ev = item.evidence
            slices = [
                dict(slice_items(ev, r, p, fold))
                for r, p in enumerate(ev.primary_rows[: drilldown.ROWS_SHOWN])
            ]
            extras.samples[kind].append(
                drilldown.encode(drilldown.pair_sample(item.record, ev, slices))
            )


__all__ = ["RECENT_PER_BATCH", "aggregate"]
