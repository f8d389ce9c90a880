"""Pair records to Redis: one writer task, pipelined XADDs, a bounded spool.

`submit` never blocks and never raises: it appends the encoded record to an in-memory
queue and wakes the writer. The writer sends up to `BATCH` XADDs (MAXLEN ~ max_pairs, or
fewer when the stream would exceed redis.max_stream_bytes: StreamBudget) per round trip
to the candidate's stream. When Redis is unreachable the queue becomes the
spool: records wait (counted once as `spooled`) while the writer retries with backoff;
beyond `proxy.spool_max` waiting records, new ones are dropped and counted. (While Redis
is up the queue is bounded by max(spool_max, BATCH) as a safety net.)
Recording resumes by itself when Redis answers again. A client request never waits on
any of this.

The writer also sends the accounting counts (`count`): per candidate and time bucket, how
many mirrors were sampled, shed, too large, left without a primary answer, cancelled, or
dropped here. They are summed locally and added (HINCRBY) to the worker's bucket hashes at
most once a second, in the same round trip as XADDs when there are any; during an outage
they wait here and are written when Redis returns.

`submit_request` queues a `run = "dispatcher"` candidate's request record instead (the
request, the headers it is to be sent with, the primary's answer) for a dispatcher
(proxy.dispatch): the same batches, through enqueue.lua, which refuses it when the
candidate's requests stream holds `dispatch.max_queue` entries (counted dispatch_overflow).

Secrets never reach the queue: captured headers are redacted by HeaderCapture, bodies and
query strings by proxy.redact in `submit` (if that ever raised, the pair is still queued,
without its bodies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from functools import lru_cache, partial
from itertools import chain
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from common.errors import StoreError
from common.keys import FIELD_CAPTURE_DROPPED, Keys
from common.records import PairRecord
from common.redis_client import async_client, store_errors
from common.scripts import SCRIPTS
from common.settings import Settings
from proxy.candidates import candidate_headers
from proxy.metrics import CAPTURE_DROPPED, CAPTURE_RECORDED, CAPTURE_SPOOLED, Metrics
from proxy.redact import REDACTED, BodyRedactor, secret_name
from proxy.tasks import bounded

log = logging.getLogger("shadowtrial.capture")

BATCH = 256  # XADDs per pipelined round trip
# A record waits this long for others before its round trip (fewer than BATCH waiting):
# at moderate rates the writer otherwise sends one or two records per round trip, and
# each costs the serving process ~75 us of CPU (redis-py, measured), a record ~15 us more.
# Nobody waits on a pair record.
LINGER_S = 0.005
ENQUEUE_RUN_RECORDS = 64  # request records per enqueue.lua call, at most
ENQUEUE_RUN_BYTES = 1 << 20  # and at most this many bytes of their fields (one may exceed)
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 1.0
NOT_REDACTED = b"[removed: redaction failed]"
COUNTS_EVERY_S = 1.0  # accounting counts are written at most this often
# After a batch failed mid-way, its records are looked for in their streams (_skip_written):
# this many entries per XRANGE, at most this many XRANGEs per stream, and without a
# confirmed entry id to start from, this much clock skew allowed between proxy and Redis.
RECONCILE_PAGE = 1000
RECONCILE_PAGES = 20
CLOCK_SKEW_MS = 60_000
RECORD_OVERHEAD = 200  # bytes a stream entry takes besides its field values (measured ~150)
COUNT = SCRIPTS["count"]  # accounting counts into one bucket, indexed (common/lua)
ENQUEUE = SCRIPTS["enqueue"]  # a request record for a dispatcher, unless its queue is full

Counts = dict[tuple[str, int], dict[str, int]]  # (candidate, bucket start) -> field -> n


class HeaderCapture:
    """Which request headers a pair record keeps, with secrets replaced by [redacted]."""

    def __init__(self, names: Iterable[str], redact: Iterable[str]) -> None:
        secret = self.redact = list(redact)  # and any name proxy.redact.SECRET_NAME matches
        self._keep = {n.lower(): secret_name(n, secret) for n in names}
        # forwarded(): a regex and a set per name, once per name rather than per request
        self._secret = lru_cache(maxsize=4096)(partial(secret_name, names=secret))

    @classmethod
    def from_settings(cls, settings: Settings) -> HeaderCapture:
        """capture_headers plus every `header:` slice or watched-feature source;
        redact_headers redacted."""
        names = list(settings.proxy.capture_headers)
        for sl in (*settings.slices, *settings.features):
            if sl.source.lower().startswith("header:"):
                names.append(sl.source[len("header:") :].strip())
        return cls(names, settings.proxy.redact_headers)

    def forwarded(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The headers a dispatcher may send: a candidate's (no credentials, the shadow
        marker), without the redacted names either, since they wait in Redis."""
        secret = self._secret
        return [(n, v) for n, v in candidate_headers(headers, False) if not secret(n)]

    def select(self, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        """The kept headers by lowercase name (repeated headers joined with ', ')."""
        kept: dict[str, str] = {}
        keep = self._keep
        for name, value in headers:
            lname = name.lower()
            secret = keep.get(lname)
            if secret is None:
                continue
            value = REDACTED if secret else value
            kept[lname] = f"{kept[lname]}, {value}" if lname in kept and not secret else value
        return kept


class BucketCounts:
    """Accounting counters by (candidate, bucket start) waiting to be written.

    Buckets are those of the worker (`worker.bucket_seconds`, by the record's timestamp),
    so a count lands in the bucket its pair would have. Memory: one small dict per
    candidate and bucket not yet written (an outage of an hour at 60 s buckets: 60 each).
    """

    def __init__(self, keys: Keys, bucket_seconds: int, ttl_s: int) -> None:
        self._keys = keys
        self._bucket_s = bucket_seconds
        self._ttl_s = ttl_s
        self.waiting: Counts = {}

    @property
    def ttl_s(self) -> int:
        """How long a bucket hash is kept (the worker's retention)."""
        return self._ttl_s

    def bucket(self, ts_ms: int) -> int:
        """The start (epoch seconds) of the bucket holding `ts_ms`."""
        seconds = ts_ms // 1000
        return seconds - seconds % self._bucket_s

    def add(self, candidate: str, field: str, ts_ms: int, n: int = 1) -> None:
        """Count `n` in the bucket holding `ts_ms` (epoch milliseconds)."""
        seconds = ts_ms // 1000
        key = (candidate, seconds - seconds % self._bucket_s)
        fields = self.waiting.get(key)
        if fields is None:
            fields = self.waiting[key] = {}
        fields[field] = fields.get(field, 0) + n

    def take(self) -> Counts:
        """Everything waiting, now owned by the caller (give it back with `restore`)."""
        taken, self.waiting = self.waiting, {}
        return taken

    def restore(self, taken: Counts) -> None:
        """Counts that could not be written wait again, added to those counted since."""
        for key, fields in taken.items():
            mine = self.waiting.setdefault(key, {})
            for name, n in fields.items():
                mine[name] = mine.get(name, 0) + n

    def queue(self, pipe: Any, taken: Counts) -> None:
        """One count.lua call per bucket on the pipeline, in the order of `taken`.

        EVAL with the script's text rather than EVALSHA: it is written at most once a
        second, needs no SCRIPT LOAD round trip, and works the same on a cluster pipeline.
        """
        keys = self._keys
        for (candidate, start), fields in taken.items():
            bucket, index = keys.bucket(candidate, start), keys.bucket_index(candidate)
            flat = chain.from_iterable(fields.items())
            names, args = COUNT.bind(
                bucket=bucket, index=index, start=start, ttl=self._ttl_s, increments=flat
            )
            pipe.execute_command("EVAL", COUNT.source, len(names), *names, *args)


class _Pending:
    __slots__ = (
        "candidate", "fields", "maxlen", "queue", "spooled", "stream", "ts_ms", "unsure",
    )  # fmt: skip

    def __init__(self, candidate: str, stream: str, fields: dict[bytes, bytes], ts_ms: int) -> None:
        self.candidate = candidate
        self.stream = stream
        self.fields = fields
        self.ts_ms = ts_ms
        self.maxlen = 1  # the stream's MAXLEN for this XADD (StreamBudget)
        self.queue = 0  # a request record for a dispatcher: its queue's max_queue
        self.spooled = False
        self.unsure = False  # in a batch whose answer was lost: maybe written already


class StreamBudget:
    """Each candidate's stream bounded by bytes as well as by entries.

    A client decides how large its bodies are, so `max_pairs` alone lets 1 MiB bodies
    take ~3 TB. The XADD MAXLEN of a stream is therefore also at most
    `redis.max_stream_bytes` / (a moving average of its records' sizes): the stream holds
    about that many bytes whatever the bodies weigh (Redis trims whole entries, oldest
    first; records are never cut, so what is kept stays comparable)."""

    SMOOTHING = 0.05  # weight of each new record in the moving average

    def __init__(self, max_pairs: int, max_bytes: int) -> None:
        self._max_pairs = max_pairs
        self._max_bytes = max_bytes
        self._mean: dict[str, float] = {}

    def maxlen(self, stream: str, fields: dict[bytes, bytes]) -> int:
        """The MAXLEN for one more record of `fields` in `stream`."""
        size = RECORD_OVERHEAD + sum(len(v) for v in fields.values())
        mean = self._mean.get(stream)
        mean = size if mean is None else mean + (size - mean) * self.SMOOTHING
        self._mean[stream] = mean
        return max(1, min(self._max_pairs, int(self._max_bytes / mean)))


class Capture:
    """The single writer of pair records for one proxy process."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        max_pairs: int,
        spool_max: int,
        metrics: Metrics,
        headers: HeaderCapture,
        redactor: BodyRedactor | None = None,
        *,
        bucket_seconds: int = 60,
        bucket_ttl_s: int = 7 * 24 * 3600,
        max_stream_bytes: int = 2**31,
        max_queue: int = 10_000,
    ) -> None:
        self._client = client
        self._keys = keys
        self._budget = StreamBudget(max_pairs, max_stream_bytes)
        self._spool_max = spool_max
        self._capacity = max(spool_max, BATCH)
        self._metrics = metrics
        self.headers = headers
        self.redactor = redactor  # proxy.redact_fields, applied before a record is queued
        self._pending: deque[_Pending] = deque()
        self._sending: list[_Pending] = []  # the batch on the wire right now
        self._streams: dict[str, str] = {}
        self._max_queue = max_queue
        self._last_ids: dict[str, bytes] = {}  # stream -> id of this process's last XADD
        self._wake = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self.counts = BucketCounts(keys, bucket_seconds, bucket_ttl_s)
        self._counts_at = 0.0  # monotonic time from which waiting counts are written
        self.redis_up = True
        self.last_error = ""

    @classmethod
    def from_settings(cls, settings: Settings, redis_url: str, metrics: Metrics) -> Capture:
        """A capture writing to the Redis at `redis_url` under the configured prefix."""
        client = async_client(
            redis_url,
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
            retry=Retry(NoBackoff(), 0),  # the writer retries on its own schedule
        )
        return cls(
            client,
            Keys(settings.redis.prefix),
            settings.redis.max_pairs,
            settings.proxy.spool_max,
            metrics,
            HeaderCapture.from_settings(settings),
            BodyRedactor.from_settings(settings),
            bucket_seconds=settings.worker.bucket_seconds,
            bucket_ttl_s=settings.worker.retention_hours * 3600,
            max_stream_bytes=settings.redis.max_stream_bytes,
            max_queue=settings.dispatch.max_queue,
        )

    @property
    def depth(self) -> int:
        """Records not yet written: queued, plus the batch on the wire."""
        return len(self._pending) + len(self._sending)

    def start(self) -> None:
        """Start the writer task on the running loop."""
        self._writer = asyncio.get_running_loop().create_task(self._run())

    def count(self, candidate: str, field: str, ts_ms: int) -> None:
        """Add one to an accounting field of the candidate's bucket at `ts_ms`; never blocks."""
        if not self.counts.waiting:
            self._wake.set()  # an idle writer arms its timer for these
        self.counts.add(candidate, field, ts_ms)

    def _dropped(self, item: _Pending | str, ts_ms: int) -> None:
        candidate = item if isinstance(item, str) else item.candidate
        self._metrics.captured(candidate, CAPTURE_DROPPED)
        self.count(candidate, FIELD_CAPTURE_DROPPED, ts_ms)

    def _redact(self, record: PairRecord) -> None:
        """Redact in place; a redactor bug costs the bodies, never the pair or a secret."""
        assert self.redactor is not None
        try:
            self.redactor.record(record)
        except Exception as exc:  # counted as recorded like any pair: the identity holds
            log.error("redaction failed (%s): pair %s kept without bodies", type(exc).__name__,
                      record.request_id)  # fmt: skip
            record.request_body = record.primary_body = record.candidate_body = NOT_REDACTED
            record.query = ""

    def submit(self, candidate: str, record: PairRecord) -> None:
        """Queue one record for its candidate's stream; never blocks, never raises."""
        if len(self._pending) >= (self._capacity if self.redis_up else self._spool_max):
            self._dropped(candidate, record.ts_ms)
            return
        stream = self._streams.get(candidate)
        if stream is None:
            stream = self._streams[candidate] = self._keys.pairs(candidate)
        if self.redactor is not None:
            self._redact(record)
        item = _Pending(candidate, stream, record.to_fields(), record.ts_ms)
        item.maxlen = self._budget.maxlen(stream, item.fields)
        self._pending.append(item)
        if not self.redis_up:
            item.spooled = True
            self._metrics.captured(candidate, CAPTURE_SPOOLED)
            self._metrics.spool_depth.set(self.depth)
        self._wake.set()

    def submit_request(
        self, candidate: str, record: PairRecord, headers: list[tuple[str, str]]
    ) -> None:
        """Queue a request record for a dispatcher; never blocks, never raises.

        The request body and query go as they came (DispatchedCandidate only dispatches
        requests the redactor leaves alone); the primary's body is redacted like a pair's.
        `h` holds the headers the dispatcher sends (HeaderCapture.forwarded).
        """
        if len(self._pending) >= (self._capacity if self.redis_up else self._spool_max):
            self._dropped(candidate, record.ts_ms)
            return
        if self.redactor is not None:
            record.primary_body = self.redactor.body(record.primary_body)
        fields = record.to_fields()
        fields[b"h"] = orjson.dumps(self.headers.forwarded(headers))
        item = _Pending(candidate, self._keys.requests(candidate), fields, record.ts_ms)
        item.queue = self._max_queue
        self._pending.append(item)
        if not self.redis_up:
            item.spooled = True
            self._metrics.captured(candidate, CAPTURE_SPOOLED)
            self._metrics.spool_depth.set(self.depth)
        self._wake.set()

    def _counts_due(self) -> bool:
        return bool(self.counts.waiting) and (self._closing or time.monotonic() >= self._counts_at)

    async def _idle(self) -> None:
        """Wait for records, or until waiting counts are due."""
        self._wake.clear()
        if not self.counts.waiting:
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(self._counts_at - time.monotonic(), 0.0)):
                await self._wake.wait()

    async def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while self._pending or self.counts.waiting or not self._closing:
            if not self._pending and not self._counts_due():
                await self._idle()
                continue
            if len(self._pending) < BATCH and self.redis_up and not self._closing:
                await asyncio.sleep(LINGER_S)  # let a batch gather: one round trip for many
            batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
            counts = self._take_counts(any(item.queue for item in batch))
            self._sending = batch
            try:
                if any(item.unsure for item in batch):
                    batch = self._sending = await self._skip_written(batch)
                results = await self._write(batch, counts)
            except StoreError as exc:
                self._sending = []
                self.counts.restore(counts)
                for item in batch:
                    item.unsure = True
                self._spool(batch, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            self._sending = []
            backoff = BACKOFF_MIN_S
            self._written(batch, results[: len(batch)])
            self._counted(counts, results[len(batch) :])

    def _take_counts(self, now: bool = False) -> Counts:
        """The waiting counts when they are due (at most once per COUNTS_EVERY_S), or `now`:
        with request records for dispatchers, whose pairs can be written within
        milliseconds, so their `sampled` counts must not wait a second behind them."""
        if not (self._counts_due() or (now and self.counts.waiting)):
            return {}
        self._counts_at = time.monotonic() + COUNTS_EVERY_S
        return self.counts.take()

    async def _write(self, batch: list[_Pending], counts: Counts) -> list[object]:
        """One round trip: the pairs' XADDs, the request records' enqueue.lua calls (one
        per run of one candidate's records of one bucket) and the counts. Returns one
        result per record of `batch` (an exception where Redis refused it), then one per
        count."""
        pipe = self._client.pipeline(transaction=False)
        groups = _enqueue_groups(batch, self.counts.bucket)
        for group in groups:
            if group[0].queue:
                pipe.execute_command("EVAL", ENQUEUE.source, *self._enqueue_args(group))
            else:
                item = group[0]
                pipe.xadd(item.stream, item.fields, maxlen=item.maxlen, approximate=True)
        self.counts.queue(pipe, counts)
        with store_errors("Redis unavailable"):
            answers = await pipe.execute(raise_on_error=False)
        results: list[object] = []
        for group, answer in zip(groups, answers, strict=False):
            if not group[0].queue or isinstance(answer, Exception):
                results += [answer] * len(group)
            elif isinstance(answer, list) and len(answer) == len(group):
                results += answer
            else:  # never from enqueue.lua: refuse rather than mis-account
                results += [ValueError(f"enqueue.lua answered {answer!r:.80}")] * len(group)
        return results + answers[len(groups) :]

    def _spool(self, batch: list[_Pending], exc: StoreError) -> None:
        """Put a failed batch back at the front, in order; count each record once."""
        if self.redis_up:
            log.warning("pair capture paused, spooling: %s", exc)
        self.redis_up = False
        self.last_error = str(exc)
        self._metrics.redis_up.set(0)
        self._pending.extendleft(reversed(batch))
        for item in self._pending:  # everything queued now waits for Redis
            if not item.spooled:
                item.spooled = True
                self._metrics.captured(item.candidate, CAPTURE_SPOOLED)
        while len(self._pending) > self._spool_max:  # the newest go first
            dropped = self._pending.pop()
            self._dropped(dropped, dropped.ts_ms)
        self._metrics.spool_depth.set(self.depth)

    def _written(self, batch: list[_Pending], results: list[object]) -> None:
        if not self.redis_up:
            log.warning("pair capture resumed; %d records still spooled", len(self._pending))
            self.redis_up = True
            self.last_error = ""
            self._metrics.redis_up.set(1)
        recorded: dict[str, int] = {}
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                self.last_error = f"Redis refused a record: {result}"
                self._dropped(item, item.ts_ms)
            elif item.queue and not self._queued(item, result):
                continue
            else:
                recorded[item.candidate] = recorded.get(item.candidate, 0) + 1
                self._last_ids[item.stream] = result  # type: ignore[assignment]
        for candidate, count in recorded.items():
            self._metrics.captured(candidate, CAPTURE_RECORDED, count)
        self._metrics.spool_depth.set(self.depth)

    def _enqueue_args(self, group: list[_Pending]) -> list[Any]:
        """enqueue.lua's key count, KEYS and ARGV for one candidate's request records of
        one bucket (_enqueue_groups)."""
        first = group[0]
        start, ttl = self.counts.bucket(first.ts_ms), self.counts.ttl_s
        bucket, index = (
            self._keys.bucket(first.candidate, start),
            self._keys.bucket_index(first.candidate),
        )
        records: list[Any] = []
        for item in group:
            records.append(2 * len(item.fields))
            records.extend(chain.from_iterable(item.fields.items()))
        names, args = ENQUEUE.bind(
            requests=first.stream, bucket=bucket, index=index, max_queue=first.queue,
            start=start, ttl=ttl, records=records,
        )  # fmt: skip
        return [len(names), *names, *args]

    def _queued(self, item: _Pending, result: object) -> bool:
        """A request record queued for a dispatcher, or refused for a full queue (counted
        dispatch_overflow by enqueue.lua; here only in /metrics, as dropped)."""
        if result == 0:
            self._metrics.captured(item.candidate, CAPTURE_DROPPED)
            return False
        return True

    async def _skip_written(self, batch: list[_Pending]) -> list[_Pending]:
        """The batch without the records already in their streams (counted as recorded).

        A batch fails when Redis dies between running its XADDs and answering: those
        records are in the stream (with an append-only file, also after a restart) and
        must not be written twice. They are found by their metadata (unique per record)
        among the stream's entries after this process's last confirmed one.
        """
        unsure: dict[str, dict[bytes, _Pending]] = {}
        for item in batch:
            if item.unsure:
                unsure.setdefault(item.stream, {})[item.fields[b"m"]] = item
                item.unsure = False
        found: list[_Pending] = []
        for stream, by_meta in unsure.items():
            last = self._last_ids.get(stream)
            oldest = min(item.ts_ms for item in by_meta.values()) - CLOCK_SKEW_MS
            start = b"(" + last if last else f"{max(oldest, 0)}-0".encode()
            async for entry_id, meta in self._entries_after(stream, start):
                item = by_meta.pop(meta, None)
                if item is not None:
                    found.append(item)
                    self._last_ids[stream] = entry_id
                if not by_meta:
                    break
        if found:
            log.warning("%d pair records were written before Redis failed; not again", len(found))
            for item in found:
                self._metrics.captured(item.candidate, CAPTURE_RECORDED)
        seen = {id(item) for item in found}
        return [item for item in batch if id(item) not in seen]

    async def _entries_after(self, stream: str, start: bytes) -> AsyncIterator[tuple[bytes, bytes]]:
        """(entry id, metadata) of up to RECONCILE_PAGES pages of entries from `start`."""
        for _ in range(RECONCILE_PAGES):
            with store_errors("Redis unavailable"):
                page = await self._client.xrange(stream, min=start, max="+", count=RECONCILE_PAGE)
            for entry_id, fields in page:
                yield entry_id, fields.get(b"m", b"")
            if len(page) < RECONCILE_PAGE:
                return
            start = b"(" + page[-1][0]

    def _counted(self, counts: Counts, results: list[object]) -> None:
        """Counts Redis refused wait for the next round."""
        for (key, fields), result in zip(counts.items(), results, strict=True):
            if isinstance(result, Exception):
                self.last_error = f"Redis refused accounting counts: {result}"
                self.counts.restore({key: fields})

    async def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued (up to `timeout_s`), drop and count the rest, disconnect."""
        self._closing = True
        self._wake.set()
        writer = self._writer
        if writer is not None:
            done, _ = await asyncio.wait({writer}, timeout=timeout_s)
            if not done:
                writer.cancel()
                await asyncio.wait({writer}, timeout=1.0)
        self._drop_pending()
        await self._flush_counts_at_close()
        await bounded(self._client.aclose(), 1.0, "closing the capture client")

    async def _flush_counts_at_close(self, timeout_s: float = 1.0) -> None:
        """One last try for counts made after the writer stopped (drops at shutdown)."""
        counts = self.counts.take()
        if not counts:
            return
        try:
            async with asyncio.timeout(timeout_s):
                results = await self._write([], counts)
        except (StoreError, TimeoutError) as exc:
            results = [exc] * len(counts)
        lost = sum(
            sum(fields.values())
            for fields, result in zip(counts.values(), results, strict=True)
            if isinstance(result, Exception)
        )
        if lost:
            log.warning("%d accounting counts not written before shutdown", lost)

    def _drop_pending(self) -> None:
        left = [*self._sending, *self._pending]
        if left:
            log.warning("dropping %d pair records not written before shutdown", len(left))
        for item in left:
            self._dropped(item, item.ts_ms)
        self._sending = []
        self._pending.clear()
        self._metrics.spool_depth.set(0)


def _enqueue_groups(batch: list[_Pending], bucket: Any) -> list[list[_Pending]]:
    """The batch in pipeline calls, in order: a pair alone (one XADD), request records in
    runs of one stream and one bucket (one enqueue.lua call each), a run closed at
    ENQUEUE_RUN_RECORDS records or ENQUEUE_RUN_BYTES of fields (a script call blocks Redis
    and holds its arguments twice: bodies of up to max_capture_bytes must not pile up)."""
    groups: list[list[_Pending]] = []
    last_key: tuple[str, int] | None = None
    size = 0
    for item in batch:
        if not item.queue:
            groups.append([item])
            last_key = None
            continue
        key = (item.stream, bucket(item.ts_ms))
        item_size = sum(len(v) for v in item.fields.values())
        if key == last_key and not (
            size + item_size > ENQUEUE_RUN_BYTES or len(groups[-1]) >= ENQUEUE_RUN_RECORDS
        ):
            groups[-1].append(item)
            size += item_size
        else:
            groups.append([item])
            last_key, size = key, item_size
    return groups
