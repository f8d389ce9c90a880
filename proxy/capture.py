"""Pair records to Redis: one writer task, pipelined XADDs, a bounded spool.

`submit` never blocks and never raises: it appends the encoded record to an in-memory
queue and wakes the writer. The writer sends up to `BATCH` XADDs (MAXLEN ~ max_pairs) per
round trip to the candidate's stream. When Redis is unreachable the queue becomes the
spool: records wait (counted once as `spooled`) while the writer retries with backoff;
beyond `proxy.spool_max` waiting records, new ones are dropped and counted. (While Redis
is up the queue is bounded by max(spool_max, BATCH) as a safety net.)
Recording resumes by itself when Redis answers again. A client request never waits on
any of this. Secrets never reach the queue: captured headers are redacted by
HeaderCapture, configured JSON fields and query parameters by proxy.redact in `submit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from common.errors import StoreError
from common.keys import Keys
from common.records import PairRecord
from common.settings import Settings
from proxy.metrics import CAPTURE_DROPPED, CAPTURE_RECORDED, CAPTURE_SPOOLED, Metrics
from proxy.redact import BodyRedactor

log = logging.getLogger("shadowtrial.capture")

BATCH = 256  # XADDs per pipelined round trip
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 1.0
REDACTED = "[redacted]"


class HeaderCapture:
    """Which request headers a pair record keeps, with secrets replaced by [redacted]."""

    def __init__(self, names: Iterable[str], redact: Iterable[str]) -> None:
        secret = {n.lower() for n in redact}
        self._keep = {n.lower(): n.lower() in secret for n in names}

    @classmethod
    def from_settings(cls, settings: Settings) -> HeaderCapture:
        """capture_headers plus every `header:` slice source; redact_headers redacted."""
        names = list(settings.proxy.capture_headers)
        for sl in settings.slices:
            if sl.source.startswith("header:"):
                names.append(sl.source[len("header:") :].strip())
        return cls(names, settings.proxy.redact_headers)

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


class _Pending:
    __slots__ = ("candidate", "fields", "spooled", "stream")

    def __init__(self, candidate: str, stream: str, fields: dict[bytes, bytes]) -> None:
        self.candidate = candidate
        self.stream = stream
        self.fields = fields
        self.spooled = False


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
    ) -> None:
        self._client = client
        self._keys = keys
        self._max_pairs = max_pairs
        self._spool_max = spool_max
        self._capacity = max(spool_max, BATCH)
        self._metrics = metrics
        self.headers = headers
        self.redactor = redactor  # proxy.redact_fields, applied before a record is queued
        self._pending: deque[_Pending] = deque()
        self._sending: list[_Pending] = []  # the batch on the wire right now
        self._streams: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self.redis_up = True
        self.last_error = ""

    @classmethod
    def from_settings(cls, settings: Settings, redis_url: str, metrics: Metrics) -> Capture:
        """A capture writing to the Redis at `redis_url` under the configured prefix."""
        client = aioredis.Redis.from_url(
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
        )

    @property
    def depth(self) -> int:
        """Records not yet written: queued, plus the batch on the wire."""
        return len(self._pending) + len(self._sending)

    def start(self) -> None:
        """Start the writer task on the running loop."""
        self._writer = asyncio.get_running_loop().create_task(self._run())

    def submit(self, candidate: str, record: PairRecord) -> None:
        """Queue one record for its candidate's stream; never blocks, never raises."""
        if len(self._pending) >= (self._capacity if self.redis_up else self._spool_max):
            self._metrics.captured(candidate, CAPTURE_DROPPED)
            return
        stream = self._streams.get(candidate)
        if stream is None:
            stream = self._streams[candidate] = self._keys.pairs(candidate)
        if self.redactor is not None:
            self.redactor.record(record)
        item = _Pending(candidate, stream, record.to_fields())
        self._pending.append(item)
        if not self.redis_up:
            item.spooled = True
            self._metrics.captured(candidate, CAPTURE_SPOOLED)
            self._metrics.spool_depth.set(self.depth)
        self._wake.set()

    async def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while self._pending or not self._closing:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
            self._sending = batch
            try:
                results = await self._write(batch)
            except StoreError as exc:
                self._sending = []
                self._spool(batch, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            self._sending = []
            backoff = BACKOFF_MIN_S
            self._written(batch, results)

    async def _write(self, batch: list[_Pending]) -> list[object]:
        pipe = self._client.pipeline(transaction=False)
        for item in batch:
            pipe.xadd(item.stream, item.fields, maxlen=self._max_pairs, approximate=True)
        try:
            return await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis unavailable: {exc}") from exc

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
            self._metrics.captured(self._pending.pop().candidate, CAPTURE_DROPPED)
        self._metrics.spool_depth.set(self.depth)

    def _written(self, batch: list[_Pending], results: list[object]) -> None:
        if not self.redis_up:
            log.warning("pair capture resumed; %d records still spooled", len(self._pending))
            self.redis_up = True
            self.last_error = ""
            self._metrics.redis_up.set(1)
        counts: dict[tuple[str, str], int] = {}
        for item, result in zip(batch, results, strict=True):
            outcome = CAPTURE_DROPPED if isinstance(result, Exception) else CAPTURE_RECORDED
            if outcome == CAPTURE_DROPPED:
                self.last_error = f"Redis refused a record: {result}"
            key = (item.candidate, outcome)
            counts[key] = counts.get(key, 0) + 1
        for (candidate, outcome), count in counts.items():
            self._metrics.captured(candidate, outcome, count)
        self._metrics.spool_depth.set(self.depth)

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
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()

    def _drop_pending(self) -> None:
        left = [*self._sending, *self._pending]
        if left:
            log.warning("dropping %d pair records not written before shutdown", len(left))
        for item in left:
            self._metrics.captured(item.candidate, CAPTURE_DROPPED)
        self._sending = []
        self._pending.clear()
        self._metrics.spool_depth.set(0)
