"""Replaying recorded requests against a candidate: sources, rate limit, pairing, writing.

The data plane offline: the engine behind `shadowtrial replay` (shadowtrial.commands.replay
has the JSONL format and the command; this is library code any caller can drive). Sources
yield `Recorded` requests (a JSONL file, or the pair records kept in a candidate's
stream); `Replay` sends each to the target at the pace of a `TokenBucket`, pairs the
answer with the recorded primary answer as the PairRecord the proxy would have written,
and XADDs the pairs to the target's stream in batches.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from common.errors import ShadowtrialError

HOP_BY_HOP = frozenset({"host", "content-length", "connection", "transfer-encoding",
                        "keep-alive", "upgrade", "te", "trailer", "proxy-connection"})  # fmt: skip
REDACTED = "[redacted]"  # what proxy.capture stores for a secret header
STREAM_CHUNK = 500
WRITE_BATCH = 200


class ReplayError(ShadowtrialError):
    """A usage problem: bad input, no URL for the candidate, Redis unreachable (exit 2)."""


# -- recorded requests -----------------------------------------------------------------------


@dataclass(slots=True)
class Recorded:
    """One request to replay and, when known, the primary's recorded answer."""

    request_id: str
    body: bytes
    method: str = "POST"
    path: str = "/"
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # sent to the model
    captured: dict[str, str] | None = None  # kept in the pair (None: derive from headers)
    primary_body: bytes | None = None
    primary_status: int = 200
    primary_ms: float = 0.0
    primary_content_type: str = ""


def _as_bytes(value: Any) -> tuple[bytes, str]:
    """A body given as a string (sent as is) or any other JSON value (sent as JSON)."""
    if isinstance(value, str):
        return value.encode("utf-8"), ""
    return orjson.dumps(value), "application/json"


def _headers(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ReplayError(f"{where}: headers must be an object of strings")
    return {str(k).lower(): v for k, v in value.items() if str(k).lower() not in HOP_BY_HOP}


def _number(obj: dict[str, Any], key: str, default: float, where: str) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ReplayError(f"{where}: {key} must be a non-negative number")
    return float(value)


def _base64(obj: dict[str, Any], key: str, where: str) -> bytes:
    """`key_base64` (binary bodies in a failure catalog, analysis.catalog) decoded."""
    try:
        return base64.b64decode(str(obj[f"{key}_base64"]), validate=True)
    except (binascii.Error, ValueError):
        raise ReplayError(f"{where}: {key}_base64 is not base64") from None


def _body_of(obj: dict[str, Any], key: str, where: str) -> tuple[bytes, str]:
    """The body under `key` (JSON value or text) or `key_base64` (bytes, no type)."""
    if key in obj:
        return _as_bytes(obj[key])
    return _base64(obj, key, where), ""


def parse_line(obj: Any, line: int) -> Recorded:
    """One JSONL line as a Recorded request (ReplayError naming the line if malformed)."""
    where = f"line {line}"
    if not isinstance(obj, dict) or ("body" not in obj and "body_base64" not in obj):
        raise ReplayError(f'{where}: expected an object with at least "body"')
    body, body_type = _body_of(obj, "body", where)
    path, _, query = str(obj.get("path") or "/").partition("?")
    headers = _headers(obj.get("headers"), where)
    if body_type:
        headers.setdefault("content-type", body_type)
    rec = Recorded(
        request_id=str(obj.get("request_id") or f"replay-{line}"),
        body=body,
        method=str(obj.get("method") or "POST").upper(),
        path=path if path.startswith("/") else f"/{path}",
        query=query,
        headers=headers,
    )
    if "primary_body" in obj or "primary_body_base64" in obj:
        rec.primary_body, content_type = _body_of(obj, "primary_body", where)
        rec.primary_content_type = str(obj.get("primary_content_type") or content_type)
        rec.primary_status = int(_number(obj, "primary_status", 200, where))
        rec.primary_ms = _number(obj, "primary_ms", 0.0, where)
    return rec


def _jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                text = raw.strip()
                if not text or text.startswith(b"#"):
                    continue
                try:
                    yield number, orjson.loads(text)
                except orjson.JSONDecodeError as exc:
                    raise ReplayError(f"{path}: line {number} is not JSON: {exc}") from None
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror or exc}") from None


def check_jsonl(path: Path, limit: int | None) -> int:
    """Validate every line before sending anything; the number of requests to replay."""
    count = 0
    for number, obj in _jsonl(path):
        parse_line(obj, number)
        count += 1
    return count if limit is None else min(count, limit)


async def jsonl_items(path: Path, limit: int | None) -> AsyncIterator[Recorded]:
    """The file's requests in order (already validated by check_jsonl)."""
    for count, (number, obj) in enumerate(_jsonl(path)):
        if limit is not None and count >= limit:
            return
        yield parse_line(obj, number)


def from_record(rec: Any) -> Recorded:
    """A pair record's request and primary answer (secret headers are not sent)."""
    return Recorded(
        request_id=rec.request_id,
        body=rec.request_body,
        method=rec.method,
        path=rec.path or "/",
        query=rec.query,
        headers={k: v for k, v in rec.headers.items() if v != REDACTED and k not in HOP_BY_HOP},
        captured=dict(rec.headers),
        primary_body=rec.primary_body,
        primary_status=rec.primary_status,
        primary_ms=rec.primary_ms,
        primary_content_type=rec.primary_content_type,
    )


async def stream_items(client: Any, stream: str, limit: int | None) -> AsyncIterator[Recorded]:
    """The pair records of a stream, oldest first, read in chunks."""
    from common.records import PairRecord, RecordError

    start, count = "-", 0
    while limit is None or count < limit:
        entries = await client.xrange(stream, min=start, max="+", count=STREAM_CHUNK)
        if not entries:
            return
        for _, fields in entries:
            if limit is not None and count >= limit:
                return
            try:
                yield from_record(PairRecord.from_fields(fields))
                count += 1
            except RecordError:
                continue
        start = "(" + entries[-1][0].decode()


# -- rate limit ------------------------------------------------------------------------------


class TokenBucket:
    """At most `rate` acquisitions per second on average, bursts up to `burst`.

    Clock and sleep are injected so tests can check the pacing without waiting.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate / 10.0)
        self.tokens = self.capacity
        self.clock = clock
        self.sleep = sleep
        self.stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    async def acquire(self) -> None:
        """Wait for one token (waiters are served in order)."""
        if self.rate <= 0:
            return
        async with self._lock:
            self._refill()
            if self.tokens < 1.0:
                await self.sleep((1.0 - self.tokens) / self.rate)
                self._refill()
            self.tokens -= 1.0


# -- sending and pairing -----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The NEW candidate: where to send, or None for an ONNX model the worker runs."""

    name: str
    url: str | None
    timeout_s: float


@dataclass(slots=True)
class Answered:
    outcome: str
    status: int
    body: bytes
    ms: float
    content_type: str = ""
    error: str = ""


@dataclass
class Tally:
    """What happened to every request."""

    total: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    skipped: int = 0  # no primary answer recorded and no --primary to ask
    written: int = 0

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


async def call(http: Any, base: str, item: Recorded, timeout_s: float) -> Answered:
    """Send one recorded request to `base`; every failure becomes an outcome."""
    import httpx

    from common.records import OUTCOME_ERROR, OUTCOME_HTTP_ERROR, OUTCOME_OK, OUTCOME_TIMEOUT

    url = base.rstrip("/") + item.path + (f"?{item.query}" if item.query else "")
    started = time.perf_counter()
    try:
        response = await http.request(
            item.method, url, content=item.body, headers=item.headers, timeout=timeout_s
        )
    except httpx.TimeoutException:
        return Answered(OUTCOME_TIMEOUT, 0, b"", _ms(started), error="timeout")
    except httpx.HTTPError as exc:
        return Answered(OUTCOME_ERROR, 0, b"", _ms(started), error=str(exc) or type(exc).__name__)
    outcome = OUTCOME_OK if 200 <= response.status_code < 300 else OUTCOME_HTTP_ERROR
    return Answered(
        outcome,
        response.status_code,
        response.content,
        _ms(started),
        response.headers.get("content-type", ""),
    )


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def pair_record(
    item: Recorded, target: Target, candidate: Answered, captured: dict[str, str]
) -> Any:
    """The pair the proxy would have recorded had NEW been mirrored this request."""
    from common.records import PairRecord

    return PairRecord(
        request_id=item.request_id,
        candidate=target.name,
        ts_ms=int(time.time() * 1000),
        method=item.method,
        path=item.path,
        query=item.query,
        headers=captured,
        request_body=item.body,
        primary_status=item.primary_status,
        primary_ms=item.primary_ms,
        primary_body=item.primary_body or b"",
        primary_content_type=item.primary_content_type,
        candidate_outcome=candidate.outcome,
        candidate_status=candidate.status,
        candidate_ms=candidate.ms,
        candidate_body=candidate.body,
        candidate_content_type=candidate.content_type,
        candidate_error=candidate.error[:500],
    )


class Replay:
    """Sends recorded requests to NEW at a bounded rate and writes the pairs to its stream."""

    def __init__(
        self,
        target: Target,
        redis: Any,
        stream: str,
        http: Any,
        bucket: TokenBucket,
        capture: Callable[[dict[str, str]], dict[str, str]],
        primary_url: str | None = None,
        max_pairs: int = 1_000_000,
        on_done: Callable[[str], None] = lambda outcome: None,
        redact: Callable[[Any], None] | None = None,
        maxlen: Callable[[str, dict[bytes, bytes]], int] | None = None,
        on_pair: Callable[[Any], None] | None = None,
    ) -> None:
        self.target = target
        self.redis = redis
        self.stream = stream
        self.http = http
        self.bucket = bucket
        self.capture = capture
        self.primary_url = primary_url
        self.max_pairs = max_pairs
        self.on_done = on_done
        self.redact = redact  # proxy.redact's BodyRedactor.record: secrets out before Redis
        self.maxlen = maxlen  # proxy.capture's StreamBudget.maxlen: the stream's byte bound
        self.on_pair = on_pair  # sees each pair before it is written (replay --check)
        self.tally = Tally()
        self._records: asyncio.Queue[Any] = asyncio.Queue(maxsize=WRITE_BATCH * 4)

    async def run(self, items: AsyncIterator[Recorded], concurrency: int) -> Tally:
        """Replay everything; the pairs are all written when this returns."""
        work: asyncio.Queue[Recorded | None] = asyncio.Queue(maxsize=concurrency * 2)
        writer = asyncio.create_task(self._write())
        senders = [asyncio.create_task(self._send_all(work)) for _ in range(concurrency)]
        try:
            async for item in items:
                await work.put(item)
            for _ in senders:
                await work.put(None)
            await asyncio.gather(*senders)
        finally:
            for task in senders:
                task.cancel()
            await self._records.put(None)
            await writer
        return self.tally

    async def _send_all(self, work: asyncio.Queue[Recorded | None]) -> None:
        while (item := await work.get()) is not None:
            outcome = await self._exchange(item)
            self.tally.total += 1
            self.on_done(outcome)

    async def _exchange(self, item: Recorded) -> str:
        await self.bucket.acquire()
        if item.primary_body is None:
            if self.primary_url is None:
                self.tally.skipped += 1
                return "skipped"
            primary, candidate = await asyncio.gather(
                call(self.http, self.primary_url, item, self.target.timeout_s),
                self._candidate(item),
            )
            item.primary_body, item.primary_status = primary.body, primary.status
            item.primary_ms, item.primary_content_type = primary.ms, primary.content_type
        else:
            candidate = await self._candidate(item)
        captured = item.captured if item.captured is not None else self.capture(item.headers)
        record = pair_record(item, self.target, candidate, captured)
        if self.on_pair is not None:
            self.on_pair(record)
        await self._records.put(record)
        self.tally.count(candidate.outcome)
        return candidate.outcome

    async def _candidate(self, item: Recorded) -> Answered:
        from common.records import OUTCOME_DEFERRED

        if self.target.url is None:
            return Answered(OUTCOME_DEFERRED, 0, b"", 0.0)
        return await call(self.http, self.target.url, item, self.target.timeout_s)

    async def _write(self) -> None:
        """XADD the pairs in pipelined batches (capped like the proxy's streams)."""
        done = False
        while not done:
            batch = [await self._records.get()]
            while len(batch) < WRITE_BATCH and not self._records.empty():
                batch.append(self._records.get_nowait())
            done = batch[-1] is None
            records = [r for r in batch if r is not None]
            if records:
                await self._flush(records)

    async def _flush(self, records: list[Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for rec in records:
            if self.redact is not None:
                self.redact(rec)
            fields = rec.to_fields()
            maxlen = self.max_pairs if self.maxlen is None else self.maxlen(self.stream, fields)
            pipe.xadd(self.stream, fields, maxlen=maxlen, approximate=True)
        await pipe.execute()
        self.tally.written += len(records)
