"""The worker's side of the live watch: watch records in, per-bucket state in Redis, once.

A batch of the watch stream (`Keys.pairs(WATCH)`, group WATCH_GROUP) is counted locally
into one WatchState per tag and bucket (inputs by analysis.watch_features, the primary's
answer by analysis.watch_outputs, its latency), then watch_fold.lua merges them into the
bucket hashes, leaves each classified answer waiting for its label, and acknowledges the
ids — atomically, after checking every id is still pending for this consumer, exactly as
analysis.apply does for pairs: a worker that dies before the script leaves the entries
for XAUTOCLAIM, one that dies after has folded them once. An entry that is not a record
counts as an unreadable request; every value is hostile and only ever counted.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from analysis.adapters import select_adapter
from analysis.adapters.base import OutputAdapter, Prediction, label_text
from analysis.feedback import clean_label
from analysis.jsonpath import JsonPath, compile_path
from analysis.summaries import SEP
from analysis.watch_features import feature_rows
from analysis.watch_outputs import watch_answer
from analysis.watch_state import WatchState
from analysis.watch_store import LATENCY, empty_states, payload
from common.keys import WATCH, WATCH_GROUP, Keys
from common.oip_binary import load_body
from common.records import PairRecord, RecordError
from common.redis_client import store_errors
from common.scripts import SCRIPTS
from common.settings import Settings

log = logging.getLogger("shadowtrial.worker")

MAX_LABEL_TEXT = 200  # a predicted class longer than this does not wait for a label
MAX_NAME = 128  # a feature name is cut to this many characters (then `…`)
MAX_VALUE = 200  # a category value likewise


DEEP = object()  # a configured path that matched a list or object: counted invalid


@dataclass(frozen=True)
class Extractors:
    """`[[features]]`: derived names renamed, JSON paths and headers added as features."""

    renames: Mapping[str, str] = field(default_factory=dict)
    paths: tuple[tuple[str, JsonPath], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()  # (feature name, lowercase header name)

    @classmethod
    def from_settings(cls, settings: Settings) -> Extractors:
        renames, paths, headers = {}, [], []
        for ft in settings.features:
            if ft.source.startswith("$"):
                paths.append((ft.name, compile_path(ft.source)))
            elif ft.source.lower().startswith("header:"):
                headers.append((ft.name, ft.source[7:].strip().lower()))
            else:
                renames[ft.source] = ft.name
        return cls(renames, tuple(paths), tuple(headers))

    def rows(self, doc: object, headers: Mapping[str, str]) -> list[dict[str, object]]:
        """Feature rows of one request: derived columns, then the configured features
        (a path's first match; a header's value) added to every row."""
        rows = feature_rows(doc, self.renames)
        if not (self.paths or self.headers):
            return rows
        extra: dict[str, object] = {name: path.first(doc) for name, path in self.paths}
        extra |= {name: headers.get(header) for name, header in self.headers}
        extra = {k: (v if not isinstance(v, list | dict) else DEEP) for k, v in extra.items()}
        return [{**row, **extra} for row in rows] or [extra]


@dataclass
class _Batch:
    """A batch counted locally: states by bucket and tag, and answers waiting for labels."""

    max_features: int
    max_categories: int
    buckets: dict[int, dict[str, WatchState]] = field(default_factory=dict)
    preds: list[tuple[str, str, int]] = field(default_factory=list)  # rid, value, start

    def states(self, start: int) -> dict[str, WatchState]:
        found = self.buckets.get(start)
        if found is None:
            found = self.buckets[start] = empty_states(self.max_features, self.max_categories)
        return found


class WatchFolder:
    """Folds batches of the watch stream for one worker consumer."""

    def __init__(self, client: redis.Redis, settings: Settings, consumer: str) -> None:
        self.client = client
        self.keys = Keys(settings.redis.prefix)
        self.consumer = consumer
        self.watch = settings.watch
        self.worker = settings.worker
        self.extractors = Extractors.from_settings(settings)
        self.adapter = select_adapter(settings.outputs)  # the pairs' adapter, [outputs]
        self._script = SCRIPTS["watch_fold"].register(client)

    def process(self, entries: Sequence[tuple[Any, Any]], now_s: float) -> int:
        """Fold and acknowledge the entries still ours; return how many were folded."""
        items = [(_id(eid), fields) for eid, fields in entries]
        while items:
            missing = self._apply(items, now_s)
            if not missing:
                return len(items)
            log.info("%d watch entries were taken over by another worker", len(missing))
            gone = set(missing)
            items = [(i, f) for i, f in items if i not in gone]
        return 0

    def _count(self, items: Sequence[tuple[str, Any]]) -> _Batch:
        batch = _Batch(self.watch.max_features, self.watch.max_categories)
        for entry_id, fields in items:
            if fields is None:  # trimmed before it was read: not a request we saw
                continue
            self._count_one(batch, entry_id, fields)
        return batch

    def _count_one(self, batch: _Batch, entry_id: str, fields: Any) -> None:
        try:
            record = PairRecord.from_fields(fields)
            ts_ms = record.ts_ms
        except (RecordError, KeyError, TypeError, ValueError):
            record, ts_ms = None, int(entry_id.partition("-")[0])
        seconds = ts_ms // 1000
        start = seconds - seconds % self.worker.bucket_seconds
        states = batch.states(start)
        if record is None:
            states["i"].requests += 1
            states["i"].unreadable += 1
            return
        prediction = count_record(record, states, self.extractors, self.adapter)
        if prediction is not None and record.request_id:
            batch.preds.append((record.request_id[:256], f"{start}{SEP}{prediction}", start))

    def _apply(self, items: Sequence[tuple[str, Any]], now_s: float) -> list[str]:
        batch = self._count(items)
        starts = sorted(batch.buckets)
        position = {s: i + 1 for i, s in enumerate(starts)}
        ids = [i for i, _ in items]
        ordered = sorted(ids, key=_id_key)
        args: list[Any] = [*ids, len(starts)]
        for start in starts:
            args += [start, *payload(batch.buckets[start])]
        args.append(len(batch.preds))
        for rid, value, start in batch.preds:
            args += [rid, value, position[start]]
        ttl = self.worker.retention_hours * 3600
        k = self.keys
        join_s = self.worker.label_join_hours * 3600
        gen = int(now_s // join_s)
        with store_errors("watch fold script failed"):
            missing = self._script(
                stream=k.pairs(WATCH), index=k.watch_index(), counts_index=k.bucket_index(WATCH),
                preds=k.watch_preds(gen), labels=k.watch_labels(gen),
                labels_prev=k.watch_labels(gen - 1),
                buckets=[k.watch_bucket(s) for s in starts], group=WATCH_GROUP,
                consumer=self.consumer, n_ids=len(ids), ttl=ttl,
                index_min=(starts[-1] if starts else int(now_s)) - ttl,
                max_features=self.watch.max_features, max_categories=self.watch.max_categories,
                preds_cap=self.worker.label_join_max, preds_ttl=2 * join_s,
                max_classes=self.watch.max_categories,
                id_min=ordered[0], id_max=ordered[-1], batch=args,
            )  # fmt: skip
        return [m.decode() if isinstance(m, bytes) else str(m) for m in missing]


def count_record(
    record: PairRecord,
    states: Mapping[str, WatchState],
    extractors: Extractors,
    adapter: OutputAdapter | None = None,
) -> str | None:
    """Count one watched record into `states` (tags i, o, t); return the predicted class of
    a single-row classified answer (what a label is later joined to), else None."""
    inputs, outputs, latency = states["i"], states["o"], states["t"]
    inputs.requests += 1
    doc = _request(record.request_body)
    rows = extractors.rows(doc, record.headers) if doc is not None else []
    if not rows:
        inputs.unreadable += 1
    for row in rows:
        inputs.add_row(bounded_row(row))
    latency.requests += 1
    if math.isfinite(record.primary_ms) and record.primary_ms >= 0:
        latency.add_row({LATENCY: record.primary_ms})
    predictions = watch_answer(
        record.request_body, record.primary_body, record.primary_status, outputs, adapter
    )
    return _single_class(predictions)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded_row(row: Mapping[str, object]) -> dict[str, object]:
    """Names and text values cut (MAX_NAME, MAX_VALUE characters): a bucket keeps up to
    max_features * max_categories of them, so each must be small whatever a client sends."""
    return {
        _cut(str(name), MAX_NAME): _cut(v, MAX_VALUE) if isinstance(v, str) else v
        for name, v in row.items()
    }


def _single_class(predictions: Sequence[Prediction]) -> str | None:
    """The class of a one-row answer as label text (what a label is later compared with)."""
    if len(predictions) != 1:
        return None
    text = label_text(predictions[0].label)
    text = clean_label(text) if text is not None else None
    return text if text and len(text) <= MAX_LABEL_TEXT else None


def _request(body: bytes) -> object:
    """The decoded request (JSON, OIP binary, or JSON with NaN / Infinity, which Python
    clients send and the watch counts as such); None when it is none of them."""
    try:
        return load_body(body)
    except (ValueError, RecursionError):
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _id(entry_id: Any) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def record_watch_label(
    client: redis.Redis,
    keys: Keys,
    request_id: str,
    label: object,
    settings: Settings,
    now_s: float | None = None,
) -> str:
    """Join a ground-truth class to the watched answer of `request_id` (row 0), once and
    whichever comes first: joined, pending (it waits for the answer to be folded), full
    (nothing more can wait in this generation) or expired (the answer's bucket is gone);
    "none" for a label that is not a class name."""
    text = clean_label(label)
    if text is None:
        return "none"
    from analysis.apply import ROLLUP_SECONDS

    join_s = settings.worker.label_join_hours * 3600
    gen = int((time.time() if now_s is None else now_s) // join_s)
    with store_errors(f"cannot record the watch label of {request_id}"):
        answer = SCRIPTS["watch_label"].register(client)(
            preds=keys.watch_preds(gen), preds_prev=keys.watch_preds(gen - 1),
            labels=keys.watch_labels(gen), base=keys.watch_base(),
            request_id=request_id[:256], label=text,
            max_classes=settings.watch.max_categories, rollup=ROLLUP_SECONDS,
            cap=settings.worker.label_join_max, ttl=2 * join_s,
        )  # fmt: skip
    return answer.decode() if isinstance(answer, bytes) else str(answer)
