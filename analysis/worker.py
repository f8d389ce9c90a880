"""The comparison worker: pair records in, exact mergeable summaries out.

One consumer group (WORKER_GROUP) per candidate stream; every worker process is one
consumer with a unique name. A loop iteration: discover streams (configured candidates
and any `Keys.pairs("*")` registered at runtime), refresh the health key, roll old
buckets up into hourly ones, take over
entries idle longer than `claim_idle_ms` (a dead worker's), then XREADGROUP a batch per
stream. A batch is understood (adapters, comparison, slices), aggregated locally into
counter increments and applied with one Lua script that also acknowledges it (see
analysis.apply_script): exactly once, whatever worker dies when.

SIGTERM (via `stop()`) stops taking work: the batch in hand is finished, applied and
acknowledged, then `run` returns.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from analysis import drilldown
from analysis.adapters import select_adapter
from analysis.adapters.base import UnparseableOutput
from analysis.apply_script import Admission, Applier, BatchExtras, roll_up
from analysis.compare import compare_outputs
from analysis.feedback import join_value
from analysis.jsonpath import compile_path
from analysis.slices import SliceExtractor
from analysis.summaries import (
    BatchDelta,
    PairEvidence,
    bucket_start,
    fold_candidates,
    slice_items,
)
from common.errors import CandidateError, StoreError
from common.keys import SAMPLES_KEPT, WORKER_GROUP, WORKER_HEALTH_TTL_S, Keys
from common.oip_binary import load_body
from common.records import (
    OUTCOME_DEFERRED,
    OUTCOME_ERROR,
    OUTCOME_HTTP_ERROR,
    OUTCOME_OK,
    OUTCOME_TIMEOUT,
    PairRecord,
    RecordError,
)
from common.redis_client import slot_groups, sync_client
from common.settings import Settings
from common.store import resolve_redis_url

log = logging.getLogger("shadowtrial.worker")

DISCOVER_EVERY_S = 5.0
SCAN_EVERY_S = 60.0
HEARTBEAT_EVERY_S = 2.0
ROLLUP_EVERY_S = 60.0
RECENT_PER_BATCH = 20  # pairs of each batch pushed to the `recent` drill-down list
_TIMED_OUTCOMES = (OUTCOME_OK, OUTCOME_HTTP_ERROR, OUTCOME_TIMEOUT)


@dataclass(slots=True)
class Item:
    """One stream entry of a batch: a pair understood, a bad record, or a trimmed id."""

    id: str
    trimmed: bool = False  # the stream no longer holds it (trimmed before it was applied)
    record: PairRecord | None = None
    evidence: PairEvidence | None = None
    unparseable: tuple[str, str] | None = None  # (side, reason)
    contract: list[Any] = field(default_factory=list)  # ContractDiff

    @property
    def ts_ms(self) -> int:
        """Arrival time: the record's, else the stream id's milliseconds."""
        return self.record.ts_ms if self.record else int(self.id.partition("-")[0])


class Evaluator:
    """Turns one pair record into evidence: parse both answers, compare, slice."""

    def __init__(self, settings: Settings) -> None:
        self.adapter = select_adapter(settings.outputs)
        self.outputs = settings.outputs
        self.extractor = SliceExtractor(settings.slices)
        self.has_slices = bool(settings.slices)
        # Decode the request, and split it into rows, only when some slice reads them.
        paths = [
            compile_path(s.source) for s in settings.slices if not s.source.startswith("header:")
        ]
        self.needs_json = bool(paths)
        self.needs_rows = any(not p.has_wildcard for p in paths)

    def evaluate(self, item: Item, deferred: bool = False) -> None:
        """Fill `item.evidence` (and its diagnostics) from `item.record`."""
        rec = item.record
        assert rec is not None
        ev = item.evidence = PairEvidence(
            request_id=rec.request_id,
            ts_ms=rec.ts_ms,
            primary_ms=rec.primary_ms,
            candidate_ms=rec.candidate_ms if rec.candidate_outcome in _TIMED_OUTCOMES else None,
            deferred=deferred,
        )
        if not 200 <= rec.primary_status < 300:
            ev.primary_failure = "primary"
            return
        try:
            primary = self.adapter.parse(rec.request_body, rec.primary_body)
        except UnparseableOutput as exc:
            ev.primary_failure = "primary_unparseable"
            item.unparseable = ("primary", str(exc))
            return
        ev.primary_rows = primary.rows
        if self.has_slices:
            ev.slice_rows = self._slices(rec, len(primary.rows))
        if rec.candidate_outcome != OUTCOME_OK:
            ev.candidate_error = rec.candidate_outcome
            return
        if rec.candidate_body == rec.primary_body:
            candidate = primary  # the same bytes lift alike (a replica, an identical answer)
        else:
            try:
                candidate = self.adapter.parse(rec.request_body, rec.candidate_body)
            except UnparseableOutput as exc:
                ev.candidate_error = "unparseable"
                item.unparseable = ("candidate", str(exc))
                return
        comparison = compare_outputs(primary, candidate, self.outputs)
        item.contract = comparison.contract_diffs
        ev.contract_kinds = [d.kind for d in comparison.contract_diffs]
        if comparison.error:
            ev.candidate_error = "contract"
            item.contract = [*item.contract, _RowCount(comparison.error)]
        else:
            ev.rows = comparison.rows

    def _slices(self, rec: PairRecord, n_rows: int) -> list[dict[str, str]]:
        request = None
        if self.needs_json and rec.request_body:
            try:
                request = load_body(rec.request_body)
            except ValueError:  # not JSON, nor binary tensors that fit: no row values
                request = None
        rows = (
            self.adapter.rows_from_json(request) if self.needs_rows and request is not None else []
        )
        return self.extractor.row_values(rows, request, rec.headers, n_rows)


@dataclass(frozen=True, slots=True)
class _RowCount:
    """A row-count mismatch shown among contract examples (counted as a candidate error)."""

    detail: str
    kind: str = "row_count"


class DeferredRunner:
    """Runs `run = "worker"` ONNX candidates on a batch's request bodies, vectorised."""

    RETRY_LOAD_S = 60.0

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._models: dict[str, Any] = {}
        self._load_errors: dict[str, tuple[float, CandidateError]] = {}

    def run(self, candidate: str, records: Sequence[PairRecord]) -> None:
        """Fill in the candidate's answer and latency share of every deferred record."""
        if not records:
            return
        started = time.perf_counter()
        try:
            answers = self._model(candidate).predict_bodies([r.request_body for r in records])
        except CandidateError as exc:
            answers = [exc] * len(records)
        share_ms = (time.perf_counter() - started) * 1000.0 / len(records)
        for rec, answer in zip(records, answers, strict=True):
            rec.candidate_ms = share_ms
            if isinstance(answer, CandidateError):
                rec.candidate_outcome, rec.candidate_error = answer.outcome, answer.detail
            else:
                rec.candidate_outcome, rec.candidate_status, rec.candidate_body = (
                    OUTCOME_OK,
                    200,
                    answer,
                )

    def _model(self, candidate: str) -> Any:
        model = self._models.get(candidate)
        if model is not None:
            return model
        failed = self._load_errors.get(candidate)
        if failed and self.clock() - failed[0] < self.RETRY_LOAD_S:
            raise failed[1]
        cand = self.settings.candidate(candidate)
        if cand is None or cand.onnx is None:
            raise CandidateError(
                OUTCOME_ERROR, "no ONNX model configured for this worker-run candidate"
            )
        from models.onnx_model import OnnxModel  # onnxruntime only where it is needed

        try:
            model = self._models[candidate] = OnnxModel.load(cand)
        except CandidateError as exc:
            self._load_errors[candidate] = (self.clock(), exc)
            log.error("cannot load the ONNX model of %s: %s", candidate, exc)
            raise
        return model


class BatchProcessor:
    """Understands, aggregates and applies one batch of one candidate's stream."""

    def __init__(
        self, client: redis.Redis, settings: Settings, consumer: str, clock: Callable[[], float]
    ) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.redis.prefix)
        self.clock = clock
        self.roles: dict[str, str] = {}
        self.evaluator = Evaluator(settings)
        self.deferred = DeferredRunner(settings)
        ttl = settings.worker.retention_hours * 3600
        self.applier = Applier(client, self.keys, WORKER_GROUP, consumer)
        self.admission = Admission(client, self.keys, ttl_s=ttl)
        self.ttl_s = ttl

    def process(self, candidate: str, entries: Sequence[tuple[Any, Any]]) -> int:
        """Apply and acknowledge the entries still ours; return how many were applied."""
        items = [self._decode(entry_id, fields) for entry_id, fields in entries]
        self._understand(candidate, items)
        while items:
            now = self.clock()
            delta, extras = self._aggregate(candidate, items, now)
            w = self.settings.worker
            missing = self.applier.apply(
                candidate,
                [i.id for i in items],
                delta,
                extras,
                ttl_s=self.ttl_s,
                join_cap=w.label_join_max,
                join_ttl_s=w.label_join_hours * 3600,
                now_s=now,
            )
            if not missing:
                return len(items)
            log.info("%d entries of %s were taken over by another worker", len(missing), candidate)
            gone = set(missing)
            items = [i for i in items if i.id not in gone]
        return 0

    @staticmethod
    def _decode(entry_id: Any, fields: Any) -> Item:
        item = Item(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
        item.trimmed = fields is None
        if fields:
            try:
                item.record = PairRecord.from_fields(fields)
            except RecordError as exc:
                log.warning("entry %s is not a pair record: %s", item.id, exc)
        return item

    def _understand(self, candidate: str, items: list[Item]) -> None:
        records = [i for i in items if i.record is not None]
        if records and candidate not in self.roles:
            self.roles[candidate] = records[0].record.role
            self.client.hset(self.keys.candidates_seen(), candidate, records[0].record.role)
        deferred = [i for i in records if i.record.candidate_outcome == OUTCOME_DEFERRED]
        self.deferred.run(candidate, [i.record for i in deferred])
        deferred_ids = {i.id for i in deferred}
        for item in records:
            try:
                self.evaluator.evaluate(item, deferred=item.id in deferred_ids)
            except Exception:  # an adapter bug must not stop the evidence: count it as bad
                log.exception("cannot evaluate entry %s of %s", item.id, candidate)
                item.record, item.evidence = None, None
        wanted = fold_candidates(i.evidence for i in items if i.evidence is not None)
        self.admission.prepare(candidate, wanted)

    def _aggregate(
        self, candidate: str, items: list[Item], now: float
    ) -> tuple[BatchDelta, BatchExtras]:
        delta = BatchDelta(self.settings.worker.bucket_seconds)
        extras = BatchExtras()
        fold = self.admission.folder(candidate)
        contract_kinds: set[str] = set()  # one example per kind and batch
        for item in items:
            if item.trimmed:
                delta.add_trimmed(1, now)
            elif item.evidence is None:
                delta.add_bad(item.ts_ms)
            else:
                delta.add(item.evidence, fold)
                self._joins(extras, item)
                self._diagnostics(extras, item, contract_kinds)
        self._pair_samples(extras, items, fold)
        return delta, extras

    def _joins(self, extras: BatchExtras, item: Item) -> None:
        ev = item.evidence
        if ev is None or ev.n_rows != 1:
            return
        primary, candidate = ev.labels()
        if primary is None:
            return
        bucket = bucket_start(ev.ts_ms, self.settings.worker.bucket_seconds)
        extras.joins.append((ev.request_id, join_value(bucket, primary, candidate), bucket))

    @staticmethod
    def _diagnostics(extras: BatchExtras, item: Item, seen: set[str]) -> None:
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

    @staticmethod
    def _pair_samples(extras: BatchExtras, items: list[Item], fold: Any) -> None:
        understood = [
            i for i in items if i.evidence is not None and i.evidence.primary_failure is None
        ]
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


def _registered_role(raw: bytes) -> str:
    """The role in a registry entry (JSON of the candidate's live settings), if it says."""
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    role = entry.get("role") if isinstance(entry, dict) else None
    return role if role in ("candidate", "secondary") else ""


class Worker:
    """One consumer of every candidate stream; `run()` until `stop()`."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        consumer: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.redis.prefix)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.clock = clock
        self.processor = BatchProcessor(client, settings, self.consumer, clock)
        self.streams: dict[str, str] = {}  # stream key -> candidate name
        self.applied = 0
        self._stopping = threading.Event()
        self._next: dict[str, float] = {}

    # -- lifecycle --

    def stop(self) -> None:
        """Stop taking work; the batch in hand is still applied and acknowledged."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """True once `stop()` was called."""
        return self._stopping.is_set()

    def run(self) -> None:
        """Loop until stopped; Redis outages are logged and retried, never fatal."""
        log.info("worker %s started", self.consumer)
        try:
            while not self.stopping:
                try:
                    self.step()
                except (redis.RedisError, StoreError) as exc:
                    log.warning("Redis error, retrying in 1 s: %s", exc)
                    self._stopping.wait(1.0)
        finally:
            self._clear_health()
            log.info("worker %s stopped after applying %d entries", self.consumer, self.applied)

    def step(self) -> int:
        """One iteration: housekeeping, take over idle entries, read and apply new ones."""
        now = time.monotonic()
        if self._due("discover", now, DISCOVER_EVERY_S):
            self.discover(scan=self._due("scan", now, SCAN_EVERY_S))
        if self._due("heartbeat", now, HEARTBEAT_EVERY_S):
            self.heartbeat()
        done = 0
        if self._due("rollup", now, ROLLUP_EVERY_S):
            self.roll_up()
        if self._due("claim", now, self.settings.worker.claim_idle_ms / 2000.0):
            done += self.claim_idle()
        done += self.read_new(block=done == 0)
        return done

    def _due(self, what: str, now: float, every_s: float) -> bool:
        if now < self._next.get(what, 0.0):
            return False
        self._next[what] = now + every_s
        return True

    # -- streams and groups --

    def discover(self, scan: bool = True) -> None:
        """Join the group of every configured, registered or (with `scan`) existing stream.

        The registry hash is read every few seconds; SCAN for `Keys.pairs("*")` walks the
        whole keyspace, so it runs only once a minute (and at start).
        """
        names = {c.name: c.role for c in self.settings.candidates}
        for name, raw in self.client.hgetall(self.keys.registry()).items():
            names.setdefault(name.decode(), _registered_role(raw))
        if scan:
            pattern = self.keys.pairs("*")
            head, tail = pattern.split("*")
            for key in self.client.scan_iter(match=pattern, count=1000, _type="stream"):
                text = key.decode()
                names.setdefault(text[len(head) : len(text) - len(tail)], "")
        for name, role in names.items():
            if self.keys.pairs(name) not in self.streams:
                self._join(name, role)

    def _join(self, name: str, role: str) -> None:
        stream = self.keys.pairs(name)
        try:
            self.client.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        if role:
            self.client.hset(self.keys.candidates_seen(), name, role)
        self.streams[stream] = name

    def roll_up(self) -> int:
        """Merge old buckets into hourly ones (atomic and idempotent: any worker may)."""
        w = self.settings.worker
        if not w.rollup_after_hours:
            return 0
        return sum(
            roll_up(
                self.client,
                self.keys,
                name,
                now_s=self.clock(),
                bucket_seconds=w.bucket_seconds,
                after_s=w.rollup_after_hours * 3600,
                ttl_s=w.retention_hours * 3600,
            )
            for name in set(self.streams.values())
        )

    def heartbeat(self) -> None:
        """Refresh this worker's health key (`shadowtrial worker --check` reads it)."""
        record = {
            "consumer": self.consumer,
            "pid": os.getpid(),
            "ts": self.clock(),
            "applied": self.applied,
        }
        self.client.set(
            self.keys.worker_health(self.consumer), orjson.dumps(record), ex=WORKER_HEALTH_TTL_S
        )

    def _clear_health(self) -> None:
        with contextlib.suppress(redis.RedisError):  # it expires by itself anyway
            self.client.delete(self.keys.worker_health(self.consumer))

    # -- reading --

    def read_new(self, block: bool = True) -> int:
        """XREADGROUP one batch per stream and apply each.

        One call for all streams; on a Redis Cluster one per slot (a candidate's keys
        share one): a quick pass first, then, if nothing came, block_ms shared out.
        """
        if not self.streams:
            self._stopping.wait(self.settings.worker.block_ms / 1000.0)
            return 0
        groups = slot_groups(self.client, list(self.streams))
        block_ms = self.settings.worker.block_ms if block else None
        if len(groups) == 1:
            return self._read(groups[0], block_ms)
        done = sum(self._read(streams, None) for streams in groups)
        if done or block_ms is None:
            return done
        share = max(1, block_ms // len(groups))
        return sum(self._read(streams, share) for streams in groups)

    def _read(self, streams: list[str], block_ms: int | None) -> int:
        try:
            response = self.client.xreadgroup(
                WORKER_GROUP,
                self.consumer,
                dict.fromkeys(streams, ">"),
                count=self.settings.worker.batch,
                block=block_ms,
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.streams.clear()  # a stream was deleted: rediscover and recreate groups
            self._next["discover"] = 0.0
            return 0
        done = 0
        for stream, entries in response or []:
            done += self._apply(stream, entries)
        return done

    def claim_idle(self) -> int:
        """Take over entries pending longer than claim_idle_ms (their worker died)."""
        done = 0
        for stream in list(self.streams):
            done += self._claim_stream(stream)
        return done

    def _claim_stream(self, stream: str) -> int:
        w = self.settings.worker
        pending = self.client.xpending_range(
            stream, WORKER_GROUP, min="-", max="+", count=w.batch, idle=w.claim_idle_ms
        )
        ids = [p["message_id"] for p in pending]
        if not ids:
            return 0
        claimed = self.client.xclaim(
            stream, WORKER_GROUP, self.consumer, w.claim_idle_ms, ids, justid=True
        )
        if not claimed:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for entry_id in claimed:
            pipe.xrange(stream, min=entry_id, max=entry_id, count=1)
        found = pipe.execute()
        entries = [
            (eid, rows[0][1] if rows else None) for eid, rows in zip(claimed, found, strict=True)
        ]
        log.info("took over %d idle entries of %s", len(entries), self.streams[stream])
        return self._apply(stream, entries)

    def _apply(self, stream: Any, entries: Sequence[tuple[Any, Any]]) -> int:
        key = stream.decode() if isinstance(stream, bytes) else stream
        done = self.processor.process(self.streams[key], entries)
        first = self.applied == 0 and done > 0
        self.applied += done
        if first:
            self.heartbeat()  # say "applying" at once, not at the next heartbeat
        return done


# -- the process ------------------------------------------------------------------------


def freeze_startup_heap() -> None:
    """Move everything alive now (modules, numpy and scipy, settings, the worker) out of the
    garbage collector's sight: a batch promotes thousands of objects, and every full
    collection then walked this static heap too (about 7% of a worker's instructions)."""
    gc.collect()
    gc.freeze()


def serve_worker(settings: Settings, consumer: str | None = None) -> int:
    """Run one worker until SIGTERM/SIGINT; the batch in hand is applied first. Exit code."""
    url, server = resolve_redis_url(settings.redis.url)
    client = sync_client(url, health_check_interval=30)
    worker = Worker(client, settings, consumer=consumer)
    freeze_startup_heap()
    previous = {
        sig: signal.signal(sig, lambda *_: worker.stop()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        worker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        client.close()
        if server is not None:
            server.stop()
    return 0
