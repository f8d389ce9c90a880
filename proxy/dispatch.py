"""`shadowtrial dispatch`: HTTP candidates called off the serving process.

For a `run = "dispatcher"` candidate the proxy only forwards and captures the request with
the primary's answer (proxy.capture.submit_request) into the candidate's requests stream.
Dispatcher processes, one consumer group (DISPATCH_GROUP) over those streams, read the
records, call the candidate with the proxy's own client (proxy.candidates.HttpCandidate:
its headers, credentials rule, request shape and timeout) at most `dispatch.concurrency`
calls at a time, and finish each record with common/lua/dispatch.lua: acknowledge it,
delete it, write the pair and count it, atomically. So:

- a dispatcher killed mid-batch loses nothing: its unacknowledged records are taken over
  (XAUTOCLAIM) by a live dispatcher after `dispatch.claim_idle_ms`;
- nothing is written twice: a record finished by another dispatcher acknowledges to 0 here,
  and the pair is not written (the candidate may have been called twice, never recorded
  twice);
- what is not called is counted in the bucket of its arrival, beside the proxies' counts:
  `dispatch:expired` (older than `dispatch.max_age_s` when read: its latency would measure
  the queue), `dispatch:trimmed` (gone from the stream before it was read), `dispatch:bad`
  (not a request record). The report's accounting identity holds in both modes.

Pairs carry `mode = "dispatcher"`; their candidate latency is the call's own time, from
the dispatcher (the primary's is the proxy's measure, as in proxy mode).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from common import dispatch_queue
from common.errors import StoreError
from common.keys import (
    DISPATCH_GROUP,
    FIELD_DISPATCH_BAD,
    FIELD_DISPATCH_EXPIRED,
    FIELD_DISPATCH_TRIMMED,
    FIELD_DISPATCHED,
    Keys,
)
from common.records import (
    MODE_DISPATCHER,
    OUTCOME_HTTP_ERROR,
    OUTCOME_OK,
    OUTCOME_TIMEOUT,
    PairRecord,
    RecordError,
)
from common.redis_client import STORE_FAILURES, async_client, is_cluster, store_errors
from common.scripts import SCRIPTS
from common.settings import CandidateSettings, Settings
from proxy.candidates import HttpCandidate, build_runner
from proxy.dispatch_metrics import DispatchMetrics
from proxy.mirror import _run_one
from proxy.redact import BodyRedactor
from proxy.routing import MirrorTarget
from proxy.runner import CandidateResult, MirrorRequest

log = logging.getLogger("shadowtrial.dispatch")

DISPATCH = SCRIPTS["dispatch"]
CLAIM_EVERY_S = 1.0  # how often each candidate's idle entries are looked for
DISCOVER_EVERY_S = 2.0  # how often the registry is read for candidates added at runtime
QUEUE_EVERY_S = 1.0  # how often the queue gauges are refreshed
IDLE_SLEEP_S = 0.01  # several candidates, nothing read: the pause before the next round
BACKOFF_MAX_S = 1.0
MAX_HEADERS = 512  # a request record's header list beyond this is not a request record
TAKEN_OVER = "taken_over"
LOW_NICE = 10  # dispatch.cpu_priority = "low"
FINISH_BATCH = 256  # dispatch.lua calls per pipelined round trip
# The worker's latency bins (analysis.stats.log_latency_edges(), 0.05 ms to 120 s, 1%
# apart), computed here without numpy: a dispatched pair's candidate latency is also
# counted as `dl:<bin>`, which the report's `dispatch` section reads.
_EDGES = [0.05 * 1.01**i for i in range(math.ceil(math.log(120_000 / 0.05) / math.log1p(0.01)) + 1)]
_LINE_BREAK = re.compile("[\r\n\0]").search  # never in a header a dispatcher sends
_TIMED = frozenset({OUTCOME_OK, OUTCOME_HTTP_ERROR, OUTCOME_TIMEOUT})  # as the worker times


@dataclass
class Route:
    """One dispatched candidate: its runner and its stream."""

    name: str
    runner: HttpCandidate
    stream: str
    claimed_at: float = 0.0
    # Entry ids this process is working on: a claim round that takes them back (they look
    # idle while a slow candidate answers) must not call the candidate for them again.
    working: set[bytes] = dataclass_field(default_factory=set)


class Dispatcher:
    """Reads request records, calls candidates, writes pairs; see the module docstring."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        consumer: str | None = None,
        metrics: DispatchMetrics | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.redis.prefix)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.metrics = metrics or DispatchMetrics()
        self.redactor = BodyRedactor.from_settings(settings)
        self.routes: dict[str, Route] = {}
        self._slots = asyncio.Semaphore(settings.dispatch.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._script = DISPATCH.register(client)
        self._count = SCRIPTS["count"].register(client)
        self._cluster = is_cluster(client)
        self._finishing: list[tuple[list[Any], list[Any], asyncio.Future[Any]]] = []
        self._flushing = False
        self._stopping = asyncio.Event()
        self._discovered_at = 0.0
        self._queue_at = 0.0

    # -- candidates -------------------------------------------------------------------

    async def discover(self) -> None:
        """Routes for the configured and the registered `run = "dispatcher"` candidates."""
        wanted = {c.name: c for c in self.settings.candidates if _dispatched(c)}
        wanted.update(await self._registered())
        for name in [n for n in self.routes if n not in wanted]:
            await self.routes.pop(name).runner.close()
        for name, cand in wanted.items():
            route = self.routes.get(name)
            if route is not None and (route.runner.url, route.runner.timeout_ms) == (
                cand.url, cand.timeout_ms,
            ):  # fmt: skip
                continue
            if route is not None:
                await route.runner.close()
            self.routes[name] = Route(name, self._runner(cand), self.keys.requests(name))
            await self._ensure_group(self.routes[name].stream)
        self._discovered_at = time.monotonic()

    def _runner(self, cand: CandidateSettings) -> HttpCandidate:
        """The proxy's HTTP runner for the candidate (its shape, timeout and client)."""
        proxy = self.settings.proxy
        plain = replace(cand, run="proxy")
        runner = build_runner(plain, proxy.max_capture_bytes, self.settings.dispatch.concurrency)
        assert isinstance(runner, HttpCandidate)
        return runner

    async def _registered(self) -> dict[str, CandidateSettings]:
        """Candidates registered at runtime with `run = "dispatcher"`: the registry's JSON
        entries (control.registry.Entry) read here, as the data plane does not import the
        control plane; an entry that is not one is skipped."""
        try:
            raw = await self.client.hgetall(self.keys.registry())
        except STORE_FAILURES as exc:
            log.debug("registry not read: %s", type(exc).__name__)
            return {}
        configured = {c.name: c for c in self.settings.candidates}
        found = {}
        for value in raw.values():
            entry = _registry_entry(value)
            if entry is None:
                continue
            name, url, timeout_ms = entry
            base = configured.get(name) or CandidateSettings(name=name, url=url)
            # The config file's shape (headers, body_set) still applies to its candidates.
            found[name] = replace(base, url=url, timeout_ms=timeout_ms, run="dispatcher")
        return found

    async def _ensure_group(self, stream: str) -> None:
        try:
            await self.client.xgroup_create(stream, DISPATCH_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- the loop ---------------------------------------------------------------------

    def stop(self) -> None:
        """Stop reading; the calls in flight finish and are written."""
        self._stopping.set()

    async def run(self) -> None:
        """Dispatch until `stop`; then wait for the calls in flight (each has a timeout)."""
        backoff = 0.05
        while not self._stopping.is_set():
            try:
                await self.round()
                backoff = 0.05
            except (StoreError, *STORE_FAILURES) as exc:
                log.warning("dispatch round failed: %s", exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        await self.drain()

    async def round(self, block: bool = True) -> int:
        """One pass over every candidate: take over idle entries, read new ones, start
        their calls. Returns how many records were started."""
        now = time.monotonic()
        if now - self._discovered_at >= DISCOVER_EVERY_S or not self.routes:
            await self.discover()
        if now - self._queue_at >= QUEUE_EVERY_S:
            await self.refresh_queue_gauges()
        started = 0
        for route in list(self.routes.values()):
            if now - route.claimed_at >= CLAIM_EVERY_S:
                started += await self._claim(route)
            one = len(self.routes) == 1 and block and not started
            started += await self._read(route, block=one)
        if not started and block and len(self.routes) != 1:
            await self._sleep(
                IDLE_SLEEP_S if self.routes else self.settings.dispatch.block_ms / 1000
            )
        return started

    async def _free(self) -> int:
        """Wait for a free call slot; how many are free now (the read's COUNT)."""
        await self._slots.acquire()
        self._slots.release()
        return self._slots._value

    async def _read(self, route: Route, block: bool) -> int:
        count = min(self.settings.dispatch.batch, await self._free())
        with store_errors("Redis unavailable"):
            answer = await self.client.xreadgroup(
                DISPATCH_GROUP, self.consumer, {route.stream: ">"}, count=count,
                block=self.settings.dispatch.block_ms if block else None,
            )  # fmt: skip
        entries = [e for _, batch in answer or [] for e in batch]
        return self._start(route, entries)

    async def _claim(self, route: Route) -> int:
        """Take over entries another (dead) dispatcher left unacknowledged for too long."""
        route.claimed_at = time.monotonic()
        count = min(self.settings.dispatch.batch, await self._free())
        with store_errors("Redis unavailable"):
            answer = await self.client.xautoclaim(
                route.stream, DISPATCH_GROUP, self.consumer,
                self.settings.dispatch.claim_idle_ms, "0-0", count=count,
            )  # fmt: skip
        claimed = list(answer[1]) if len(answer) > 1 else []
        deleted = list(answer[2]) if len(answer) > 2 else []
        entries = [(i, f) for i, f in claimed if i is not None]
        if entries:
            log.info("took over %d request records of %s", len(entries), route.name)
        # Pending entries trimmed away before anyone finished them (Redis 7 lists their ids
        # and drops them from the group itself): the entries are gone, their counts are not.
        await self._count_gone(route, deleted)
        if len(entries) < len(claimed):  # Redis 6.2: claimed as nil, their ids not said
            await self._sweep_gone(route)
        return self._start(route, entries)

    async def _sweep_gone(self, route: Route) -> None:
        """Finish as trimmed this consumer's pending entries the stream no longer holds
        (dispatch.lua's XACK counts each once, whoever else looks at the same time)."""
        with store_errors("Redis unavailable"):
            pending = await self.client.xpending_range(
                route.stream, DISPATCH_GROUP, min="-", max="+",
                count=self.settings.dispatch.batch, consumername=self.consumer,
            )  # fmt: skip
            ids = [p["message_id"] for p in pending]
            pipe = self.client.pipeline(transaction=False)
            for entry_id in ids:
                pipe.xrange(route.stream, min=entry_id, max=entry_id, count=1)
            found = await pipe.execute() if ids else []
        for entry_id, rows in zip(ids, found, strict=True):
            if not rows:
                ts_ms = dispatch_queue.id_ms(entry_id)
                await self._finish(route, entry_id, FIELD_DISPATCH_TRIMMED, ts_ms)

    async def _count_gone(self, route: Route, ids: Iterable[bytes]) -> None:
        for entry_id in ids:
            ts_ms = dispatch_queue.id_ms(entry_id)
            await self._count_only(route, FIELD_DISPATCH_TRIMMED, ts_ms)

    async def _count_only(self, route: Route, field: str, ts_ms: int) -> None:
        """Count a record that no longer exists (no entry to acknowledge)."""
        start, ttl = self._bucket(ts_ms)
        with store_errors("Redis unavailable"):
            await self._count(
                bucket=self.keys.bucket(route.name, start),
                index=self.keys.bucket_index(route.name), start=start, ttl=ttl,
                increments=[field, 1],
            )  # fmt: skip
        self.metrics.finished(route.name, field.partition(":")[2])

    def _start(self, route: Route, entries: list[Any]) -> int:
        """One task per entry not already being worked on here; how many started."""
        loop = asyncio.get_running_loop()
        started = 0
        for entry_id, fields in entries:
            if entry_id in route.working:
                continue
            route.working.add(entry_id)
            task = loop.create_task(self._dispatch(route, entry_id, fields))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
        return started

    async def _dispatch(self, route: Route, entry_id: bytes, fields: Any) -> None:
        """Call the candidate for one record and finish it; errors never escape."""
        async with self._slots:
            self.metrics.in_flight.inc()
            try:
                await self._handle(route, entry_id, fields)
            except (StoreError, *STORE_FAILURES) as exc:  # taken over after claim_idle_ms
                log.warning("record %s of %s not finished: %s", entry_id, route.name, exc)
            except Exception:  # a record that breaks us must not come back forever
                log.exception("record %s of %s: counted bad", entry_id, route.name)
                await self._finish_bad(route, entry_id)
            finally:
                self.metrics.in_flight.dec()
                route.working.discard(entry_id)

    async def _finish_bad(self, route: Route, entry_id: bytes) -> None:
        with contextlib.suppress(StoreError, *STORE_FAILURES):
            await self._finish(route, entry_id, FIELD_DISPATCH_BAD, dispatch_queue.id_ms(entry_id))

    async def _handle(self, route: Route, entry_id: bytes, fields: Any) -> None:
        arrived_ms = dispatch_queue.id_ms(entry_id)
        if not fields:  # read from the pending list after it was trimmed away
            await self._finish(route, entry_id, FIELD_DISPATCH_TRIMMED, arrived_ms)
            return
        try:
            record, headers = decode(fields)
        except RecordError as exc:
            log.warning("request record %s of %s is unreadable: %s", entry_id, route.name, exc)
            await self._finish(route, entry_id, FIELD_DISPATCH_BAD, arrived_ms)
            return
        age_s = time.time() - record.ts_ms / 1000
        if age_s > self.settings.dispatch.max_age_s:
            await self._finish(route, entry_id, FIELD_DISPATCH_EXPIRED, record.ts_ms)
            return
        request = MirrorRequest(
            record.request_id, record.method, record.path, record.query, headers,
            record.request_body,
        )  # fmt: skip
        result = await _run_one(MirrorTarget(route.runner, 1.0), request)
        if result.status:
            self.metrics.answered(route.name, result.elapsed_ms / 1000)
        pair = self.pair(record, result)
        await self._finish(route, entry_id, FIELD_DISPATCHED, record.ts_ms, pair)

    def pair(self, record: PairRecord, result: CandidateResult) -> PairRecord:
        """The pair record: the request record with the candidate's answer, redacted."""
        pair = replace(
            record,
            candidate_outcome=result.outcome,
            candidate_status=result.status,
            candidate_ms=round(result.elapsed_ms, 3),
            candidate_body=result.body,
            candidate_content_type=result.content_type,
            candidate_error=result.error,
            mode=MODE_DISPATCHER,
        )
        try:
            self.redactor.record(pair)
        except Exception as exc:  # the proxy's rule: the bodies go, the pair stays
            log.error("redaction failed (%s): pair %s kept without bodies",
                      type(exc).__name__, pair.request_id)  # fmt: skip
            pair.request_body = pair.primary_body = pair.candidate_body = b""
            pair.query = ""
        return pair

    def _bucket(self, ts_ms: int) -> tuple[int, int]:
        worker = self.settings.worker
        seconds = ts_ms // 1000
        return seconds - seconds % worker.bucket_seconds, worker.retention_hours * 3600

    async def _finish(
        self,
        route: Route,
        entry_id: bytes,
        field: str,
        ts_ms: int,
        pair: PairRecord | None = None,
    ) -> None:
        """dispatch.lua: acknowledge, delete, write the pair, count; all or nothing.

        Records finished while a round trip is on the wire wait and go together in the
        next one (one pipeline, like the proxy's capture): a dispatcher's Redis cost is
        per batch, not per record. StoreError when Redis failed: the record stays pending
        and is taken over later.
        """
        start, ttl = self._bucket(ts_ms)
        flat: list[Any] = []
        timed = ""
        if pair is not None:
            for name, value in pair.to_fields().items():
                flat += [name, value]
            if pair.candidate_outcome in _TIMED and pair.candidate_ms > 0:
                timed = f"dl:{latency_bin(pair.candidate_ms)}"
        keys, args = DISPATCH.bind(
            requests=route.stream, pairs=self.keys.pairs(route.name),
            bucket=self.keys.bucket(route.name, start),
            index=self.keys.bucket_index(route.name), group=DISPATCH_GROUP, id=entry_id,
            maxlen=self.settings.redis.max_pairs, start=start, ttl=ttl, counted=field,
            timed=timed, fields=flat,
        )  # fmt: skip
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._finishing.append((keys, args, done))
        if not self._flushing:
            await self._flush_all()
        result = await done
        self.metrics.finished(route.name, field.partition(":")[2] if result else TAKEN_OVER)

    async def _flush_all(self) -> None:
        """Send what is waiting, batch after batch, until nothing is (the group commit)."""
        self._flushing = True
        try:
            while self._finishing:
                batch = self._finishing[:FINISH_BATCH]
                del self._finishing[:FINISH_BATCH]
                try:
                    await self._flush(batch)
                except (StoreError, *STORE_FAILURES) as exc:
                    for _, _, done in batch:
                        if not done.done():
                            done.set_exception(StoreError(f"Redis unavailable: {exc}"))
        finally:
            self._flushing = False
            for _, _, done in self._finishing:  # only when cancelled mid-way
                if not done.done():
                    done.set_exception(StoreError("dispatcher stopping"))
            self._finishing.clear()

    async def _flush(self, batch: list[tuple[list[Any], list[Any], asyncio.Future[Any]]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        # EVAL on a cluster pipeline: redis-py refuses EVALSHA there (common.redis_client)
        how = ("EVAL", DISPATCH.source) if self._cluster else ("EVALSHA", self._script.script.sha)
        for keys, args, _ in batch:
            pipe.execute_command(*how, len(keys), *keys, *args)
        with store_errors("Redis unavailable"):
            results = await pipe.execute(raise_on_error=False)
            for (keys, args, done), result in zip(batch, results, strict=True):
                if isinstance(result, NoScriptError):  # Redis restarted: load it, once
                    result = await self._script.script(keys=keys, args=args)
                if isinstance(result, Exception):
                    done.set_exception(StoreError(f"Redis refused a record: {result}"))
                else:
                    done.set_result(result)

    async def refresh_queue_gauges(self) -> dict[str, dispatch_queue.QueueState]:
        """Read every candidate's queue depth and lag into the gauges."""
        self._queue_at = time.monotonic()
        names = list(self.routes)
        if not names:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            dispatch_queue.queue(pipe, self.keys, name)
        with store_errors("Redis unavailable"):
            answers = await pipe.execute(raise_on_error=False)
        states = {}
        for i, name in enumerate(names):
            states[name] = dispatch_queue.parse(answers[2 * i], answers[2 * i + 1])
            self.metrics.queue(name, states[name])
        return states

    async def drain(self, timeout_s: float | None = None) -> None:
        """Wait for the calls in flight (a candidate's timeout bounds each)."""
        if self._tasks:
            longest = max((r.runner.timeout_ms for r in self.routes.values()), default=0)
            wait_s = timeout_s if timeout_s is not None else longest / 1000 + 5
            await asyncio.wait(set(self._tasks), timeout=wait_s)

    async def close(self) -> None:
        """Close every candidate's connections."""
        for route in self.routes.values():
            await route.runner.close()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


def _registry_entry(raw: Any) -> tuple[str, str, int] | None:
    """(name, url, timeout_ms) of a registry entry that is dispatched, else None."""
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(entry, dict) or entry.get("run") != "dispatcher":
        return None
    name, url, timeout_ms = entry.get("name"), entry.get("url"), entry.get("timeout_ms")
    if not (isinstance(name, str) and isinstance(url, str) and isinstance(timeout_ms, int)):
        return None
    return name, url, max(timeout_ms, 1)


def latency_bin(ms: float) -> int:
    """The worker's latency bin of `ms` (analysis.summaries.latency_bin)."""
    return min(max(bisect.bisect_right(_EDGES, ms) - 1, 0), len(_EDGES) - 2)


def _dispatched(cand: CandidateSettings) -> bool:
    return cand.url is not None and cand.run == "dispatcher"


def decode(fields: Any) -> tuple[PairRecord, list[tuple[str, str]]]:
    """A request record and the headers to send; RecordError for anything else."""
    record = PairRecord.from_fields(fields)
    raw = fields.get(b"h", fields.get("h")) if isinstance(fields, dict) else None
    try:
        headers = orjson.loads(raw) if raw is not None else []
    except orjson.JSONDecodeError:
        raise RecordError("its headers are not JSON") from None
    if not isinstance(headers, list) or len(headers) > MAX_HEADERS:
        raise RecordError("its headers are not a list of pairs")
    pairs = []
    for item in headers:
        if not (isinstance(item, list) and len(item) == 2):
            raise RecordError("its headers are not a list of pairs")
        name, value = item
        if not (isinstance(name, str) and isinstance(value, str)):
            raise RecordError("its headers are not a list of pairs")
        if not name or _LINE_BREAK(name) or _LINE_BREAK(value):
            raise RecordError("a header holds a line break")
        pairs.append((name, value))
    return record, pairs


def _lower_priority(priority: str) -> None:
    """`dispatch.cpu_priority`: yield the CPU to the proxies on a shared host (the primary's
    users must not feel the shadow; a dispatcher only delays records, which wait in Redis).

    Measured here (2 cores, two proxy workers at 2,400 req/s, the dispatcher keeping up as
    it can): the primary's p99 was 110-133 ms with the dispatcher at nice 10 and 28-48 ms
    with it at SCHED_IDLE (shadowing off: 20-77 ms). Under the kernel's EEVDF scheduler a
    niced process keeps its time slice when a proxy wakes; an idle-policy one is preempted.
    The price (dispatch_bench, same host): an idle dispatcher's candidate latencies include
    its own waits for the CPU (+8.3 ms median against the proxy's measure of the same
    requests, p99 65 against 11 ms; +0.3 ms at normal priority), which is why it is not
    the default: the gate's latency rule reads them.
    """
    if priority == "normal":
        return
    try:
        if priority == "idle":
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.nice(LOW_NICE)
    except (OSError, AttributeError) as exc:  # not Linux, or a sandbox that forbids it
        log.warning("dispatch.cpu_priority = %r not applied: %s", priority, exc)
        return
    log.info("dispatcher CPU priority: %s", priority)


def serve_dispatcher(
    settings: Settings, consumer: str | None = None, metrics_port: int | None = None
) -> int:
    """Run one dispatcher until SIGTERM/SIGINT; the calls in flight are finished first."""
    from common.store import resolve_redis_url

    url, server = resolve_redis_url(settings.redis.url)
    _lower_priority(settings.dispatch.cpu_priority)
    metrics = DispatchMetrics()
    if metrics_port is not None:
        metrics.serve(metrics_port)

    async def main() -> None:
        client = async_client(url, socket_connect_timeout=2.0, socket_timeout=10.0)
        dispatcher = Dispatcher(client, settings, consumer, metrics)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, dispatcher.stop)
        log.info("dispatcher %s started", dispatcher.consumer)
        try:
            await dispatcher.run()
        finally:
            await dispatcher.close()
            await client.aclose()

    try:
        asyncio.run(main())
    finally:
        if server is not None:
            server.stop()
    return 0


__all__ = ["Dispatcher", "decode", "serve_dispatcher"]
