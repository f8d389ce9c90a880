"""The comparison worker: pair records in, exact mergeable summaries out.

One consumer group (WORKER_GROUP) per candidate stream; every worker process is one
consumer with a unique name. A loop iteration: discover streams (configured candidates
and any `Keys.pairs("*")` registered at runtime), refresh the health key, roll old
buckets up into hourly ones, take over
entries idle longer than `claim_idle_ms` (a dead worker's), then XREADGROUP a batch per
stream. A batch goes through one pipeline, a module per stage: analysis.decode (entries
into items), analysis.evaluate (adapters, comparison, slices), analysis.aggregate
(counter increments and extras, locally) and analysis.apply (one Lua script that applies
and acknowledges it: exactly once, whatever worker dies when).

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
from typing import Any

import orjson
import redis

from analysis.admission import Admission, fold_candidates
from analysis.aggregate import aggregate
from analysis.apply import Applier, roll_up
from analysis.decode import Item, decode
from analysis.evaluate import Evaluation
from analysis.skew import SkewSource
from analysis.watch_fold import WatchFolder
from analysis.watch_rollup import roll_up_watch
from common.errors import StoreError
from common.keys import WATCH, WATCH_GROUP, WORKER_GROUP, WORKER_HEALTH_TTL_S, Keys
from common.redis_client import STORE_FAILURES, slot_groups, sync_client
from common.settings import Settings
from common.store import resolve_redis_url

log = logging.getLogger("shadowtrial.worker")

DISCOVER_EVERY_S = 5.0
SCAN_EVERY_S = 60.0
HEARTBEAT_EVERY_S = 2.0
ROLLUP_EVERY_S = 60.0


class BatchProcessor:
    """One batch of one candidate's stream through the pipeline: decode, evaluate,
    aggregate, apply (one module each); re-aggregated without the entries another worker
    took over meanwhile."""

    def __init__(
        self, client: redis.Redis, settings: Settings, consumer: str, clock: Callable[[], float]
    ) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.redis.prefix)
        self.clock = clock
        self.roles: dict[str, str] = {}
        self.evaluation = Evaluation(settings)
        self.evaluation.evaluator.skew_source = SkewSource(client, settings)
        if settings.outputs.text_calibrate and self.evaluation.meaning is not None:
            from analysis.text_calibration import NoiseCalibration  # reads the report's window

            self.evaluation.meaning.calibration = NoiseCalibration(client, settings, clock)
        ttl = settings.worker.retention_hours * 3600
        self.applier = Applier(client, self.keys, WORKER_GROUP, consumer)
        self.admission = Admission(client, self.keys, ttl_s=ttl)
        self.ttl_s = ttl

    def process(self, candidate: str, entries: Sequence[tuple[Any, Any]]) -> int:
        """Apply and acknowledge the entries still ours; return how many were applied."""
        items = [decode(entry_id, fields) for entry_id, fields in entries]
        self._seen(candidate, items)
        self.evaluation.run(candidate, items)
        self.admission.prepare(
            candidate, fold_candidates(i.evidence for i in items if i.evidence is not None)
        )
        while items:
            missing = self._apply(candidate, items)
            if not missing:
                return len(items)
            log.info("%d entries of %s were taken over by another worker", len(missing), candidate)
            gone = set(missing)
            items = [i for i in items if i.id not in gone]
        return 0

    def _seen(self, candidate: str, items: Sequence[Item]) -> None:
        """Record the candidate's role the first time this process sees one of its pairs."""
        first = next((i.record for i in items if i.record is not None), None)
        if first is not None and candidate not in self.roles:
            self.roles[candidate] = first.role
            self.client.hset(self.keys.candidates_seen(), candidate, first.role)

    def _apply(self, candidate: str, items: Sequence[Item]) -> list[str]:
        now = self.clock()
        w = self.settings.worker
        fold = self.admission.folder(candidate)
        delta, extras = aggregate(items, fold, w.bucket_seconds, now, w.label_join_rows)
        return self.applier.apply(
            candidate,
            [i.id for i in items],
            delta,
            extras,
            ttl_s=self.ttl_s,
            join_cap=w.label_join_max,
            join_ttl_s=w.label_join_hours * 3600,
            now_s=now,
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
        self.watch = WatchFolder(client, settings, self.consumer)
        self.watch_stream: str | None = None  # the watch stream, once its group is joined
        self.watched = 0
        self.applied = 0
        self.errors = 0  # rounds lost to Redis errors (in the health key)
        self._rate_from = (clock(), 0)  # (when, applied) at the last heartbeat
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
                except (*STORE_FAILURES, StoreError) as exc:
                    self.errors += 1
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
        if self.watch_stream is not None:
            done += self.read_watch(block=not self.streams and done == 0)
            if not self.streams:
                return done
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
        watching = names.pop(WATCH, None) is not None or self.settings.watch.sample > 0
        if watching and self.watch_stream is None:
            self.watch_stream = self._create_group(self.keys.pairs(WATCH), WATCH_GROUP)
        for name, role in names.items():
            if self.keys.pairs(name) not in self.streams:
                self._join(name, role)

    def _create_group(self, stream: str, group: str) -> str:
        try:
            self.client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        return stream

    def _join(self, name: str, role: str) -> None:
        stream = self._create_group(self.keys.pairs(name), WORKER_GROUP)
        if role:
            self.client.hset(self.keys.candidates_seen(), name, role)
        self.streams[stream] = name

    def roll_up(self) -> int:
        """Merge old buckets into hourly ones (atomic and idempotent: any worker may)."""
        w = self.settings.worker
        if not w.rollup_after_hours:
            return 0
        names = set(self.streams.values())
        if self.watch_stream is not None:
            roll_up_watch(self.client, self.settings, now_s=self.clock())
            names.add(WATCH)  # the proxies' accounting buckets of the watch
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
            for name in names
        )

    def heartbeat(self) -> None:
        """Refresh this worker's health key (`shadowtrial worker --check` reads it)."""
        now = self.clock()
        since, applied_then = self._rate_from
        self._rate_from = (now, self.applied)
        record = {
            "consumer": self.consumer,
            "pid": os.getpid(),
            "ts": now,
            "applied": self.applied,
            "watched": self.watched,
            # What others act on (docs/operating.md): throughput, errors, and how far
            # behind each candidate's stream is (Redis 7 `lag`: entries not yet read).
            "pairs_per_s": round((self.applied - applied_then) / max(now - since, 1e-3), 3),
            "errors": self.errors,
            "lag": self._lags(),
        }
        self.client.set(
            self.keys.worker_health(self.consumer), orjson.dumps(record), ex=WORKER_HEALTH_TTL_S
        )
        self.client.zadd(self.keys.workers(), {self.consumer: now})  # /metrics reads these

    def _lags(self) -> dict[str, int | None]:
        """Candidate -> entries of its stream the group has not read (None: unknown)."""
        lags: dict[str, int | None] = {}
        for stream, name in self.streams.items():
            groups = self.client.xinfo_groups(stream)
            ours = [g for g in groups if g.get("name") in (WORKER_GROUP, WORKER_GROUP.encode())]
            lags[name] = ours[0].get("lag") if ours else None
        if self.watch_stream is not None:  # the watch's own group, under its reserved name
            groups = self.client.xinfo_groups(self.watch_stream)
            ours = [g for g in groups if g.get("name") in (WATCH_GROUP, WATCH_GROUP.encode())]
            lags[WATCH] = ours[0].get("lag") if ours else None
        return lags

    def _clear_health(self) -> None:
        with contextlib.suppress(*STORE_FAILURES):  # it expires by itself anyway
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

    def read_watch(self, block: bool) -> int:
        """XREADGROUP one batch of the watch stream (its own group) and fold it."""
        assert self.watch_stream is not None
        w = self.settings.worker
        try:
            response = self.client.xreadgroup(
                WATCH_GROUP, self.consumer, {self.watch_stream: ">"},
                count=w.batch, block=w.block_ms if block else None,
            )  # fmt: skip
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.watch_stream = None  # deleted: the next discovery recreates the group
            self._next["discover"] = 0.0
            return 0
        return sum(self._fold(entries) for _, entries in response or [])

    def _fold(self, entries: Sequence[tuple[Any, Any]]) -> int:
        done = self.watch.process(entries, self.clock())
        self.watched += done
        return done

    def claim_idle(self) -> int:
        """Take over entries pending longer than claim_idle_ms (their worker died)."""
        done = 0
        if self.watch_stream is not None:
            done += self._claim_watch(self.watch_stream)
        for stream in list(self.streams):
            done += self._claim_stream(stream)
        return done

    def _claim_stream(self, stream: str) -> int:
        entries = self._claimed(stream, WORKER_GROUP)
        if not entries:
            return 0
        log.info("took over %d idle entries of %s", len(entries), self.streams[stream])
        return self._apply(stream, entries)

    def _claim_watch(self, stream: str) -> int:
        entries = self._claimed(stream, WATCH_GROUP)
        if not entries:
            return 0
        log.info("took over %d idle watch entries", len(entries))
        return self._fold(entries)

    def _claimed(self, stream: str, group: str) -> list[tuple[Any, Any]]:
        """Entries of `stream` idle longer than claim_idle_ms in `group`, now ours
        (fields None: trimmed from the stream meanwhile)."""
        w = self.settings.worker
        pending = self.client.xpending_range(
            stream, group, min="-", max="+", count=w.batch, idle=w.claim_idle_ms
        )
        ids = [p["message_id"] for p in pending]
        if not ids:
            return []
        claimed = self.client.xclaim(
            stream, group, self.consumer, w.claim_idle_ms, ids, justid=True
        )
        if not claimed:
            return []
        pipe = self.client.pipeline(transaction=False)
        for entry_id in claimed:
            pipe.xrange(stream, min=entry_id, max=entry_id, count=1)
        found = pipe.execute()
        return [
            (eid, rows[0][1] if rows else None) for eid, rows in zip(claimed, found, strict=True)
        ]

    def _apply(self, stream: Any, entries: Sequence[tuple[Any, Any]]) -> int:
        key = stream.decode() if isinstance(stream, bytes) else stream
        done = self.processor.process(self.streams[key], entries)
        first = self.applied == 0 and done > 0
        self.applied += done
        if first:
            self.heartbeat()  # say "applying" at once, not at the next heartbeat
        return done


# -- the process ------------------------------------------------------------------------


# Allocations (net of frees) between young collections. A batch holds some 30 containers
# per pair alive until it is applied, so with the default 700 the collector ran dozens of
# times per batch, walking objects that were all alive; freed at the batch's end by their
# reference counts, they rarely reach this many. Cyclic garbage waits a little longer.
GC_YOUNG_THRESHOLD = 50_000


def freeze_startup_heap() -> None:
    """Move everything alive now (modules, numpy and scipy, settings, the worker) out of the
    garbage collector's sight: a batch promotes thousands of objects, and every full
    collection then walked this static heap too (about 7% of a worker's instructions).
    Then collect the young generation less often (GC_YOUNG_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


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
