"""Mirroring: which requests go to which candidates, bounded, off the client's path.

- Eligible: the method is in `proxy.mirror_methods` (POST by default, so a side effect
  never happens twice) and the normalised path matches one of `proxy.mirror_paths`
  (by default the inference paths of `[outputs] protocol`; see proxy.paths).
- Sticky sampling: u = first 8 bytes of blake2b(sample key) / 2**64; a candidate gets
  the request when u < its sample rate. The key is the request id, or a header with
  `proxy.sample_by = "header:X-User-Id"`. No per-candidate salt: a 10% sample is a subset
  of a 30% one, and every replica decides alike. `[[strata]]` multiply the rate of the
  requests with a given header value (StrataPolicy), e.g. 20x for a rare tenant.
- Bounded: at most `proxy.mirror_concurrency` mirrors in flight (sent and not yet handed
  to capture); beyond it new mirrors are shed and counted.
- Detached: one task per sampled request runs its candidates; each, once it and the
  primary are done, hands its pair record to capture and frees its slot. The client's
  response never waits for any of it.
- Watched (`[watch] sample`, issue 15): a request whose point is under the watch rate is
  also recorded primary-only (request and the primary's answer, failed answers included:
  they are the watch's errors) to the reserved stream `~watch`, through the same capture
  and with the same accounting, whether or not any candidate exists. Watches in flight
  are bounded by `proxy.mirror_concurrency` on their own (shed beyond, counted).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import orjson

from common.keys import (
    FIELD_CANCELLED,
    FIELD_PRIMARY_FAILED,
    FIELD_SAMPLED,
    FIELD_SHED,
    FIELD_TOO_LARGE,
    WATCH,
)
from common.records import (
    MODE_DISPATCHER,
    OUTCOME_DISPATCHED,
    OUTCOME_ERROR,
    OUTCOME_HTTP_ERROR,
    OUTCOME_OK,
    PRIMARY_SERVED,
    PairRecord,
)
from common.settings import ProxySettings, StratumSettings
from common.slice_text import value_text
from proxy.capture import Capture
from proxy.metrics import (
    MIRROR_PRIMARY_FAILED,
    MIRROR_SHED,
    MIRROR_TOO_LARGE,
    Metrics,
)
from proxy.paths import compile_patterns, default_paths, normalise
from proxy.routing import MirrorTarget
from proxy.runner import CandidateResult, MirrorRequest, empty_result

log = logging.getLogger("shadowtrial.mirror")

_TWO_64 = float(2**64)
_ANSWERED = frozenset({OUTCOME_OK, OUTCOME_HTTP_ERROR})  # outcomes with a latency
_PATH_CACHE_MAX = 4096
# Mirror outcomes that leave no pair record, and the bucket field that accounts for them.
_UNRECORDED = {
    MIRROR_SHED: FIELD_SHED,
    MIRROR_TOO_LARGE: FIELD_TOO_LARGE,
    MIRROR_PRIMARY_FAILED: FIELD_PRIMARY_FAILED,
}


def sample_point(key: str) -> float:
    """The request's position in [0, 1): the same key gives the same point everywhere."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _TWO_64


@dataclass(slots=True)
class PrimaryAnswer:
    """What the primary answered, as the pair record needs it."""

    status: int
    body: bytes
    content_type: str
    elapsed_ms: float
    failed: bool = False  # no complete answer: unreachable, timeout, or aborted mid-way


class MirrorPolicy:
    """Which requests may be mirrored at all, decided from method and path."""

    def __init__(self, settings: ProxySettings, protocol: str = "auto") -> None:
        self.methods = frozenset(m.upper() for m in settings.mirror_methods)
        self.patterns = settings.mirror_paths or default_paths(protocol)
        self._any_path = "**" in self.patterns
        self._match = compile_patterns(self.patterns).fullmatch
        self._paths: dict[str, bool] = {}
        kind, _, name = settings.sample_by.partition(":")
        self.sample_header = name.strip().lower() if kind == "header" and name.strip() else None

    def path_allowed(self, raw_path: str) -> bool:
        """True when the raw (still percent-encoded) path, normalised, matches a mirror
        pattern (proxy.paths; cached, the cache is bounded)."""
        if self._any_path:
            return True
        allowed = self._paths.get(raw_path)
        if allowed is None:
            path = normalise(raw_path)
            allowed = path is not None and self._match(path) is not None
            if len(self._paths) >= _PATH_CACHE_MAX:
                self._paths.clear()
            self._paths[raw_path] = allowed
        return allowed


class StrataPolicy:
    """Per-stratum sample multipliers (`[[strata]]`): a request whose header `from` (or, for
    `from = "$.field"`, whose JSON body's top-level field) equals `value` is mirrored at
    `sample` times each candidate's rate, capped at 1. Sticky like the rate itself (the same
    point, the same request: the same choice on every replica); the report weights the
    strata back (analysis.strata). Without strata: factor 1.

    A body field is read only from a body the proxy already buffers for mirroring, and only
    when the request's sample point could be chosen at the largest factor (`worth`), so
    most bodies are never parsed; a body that is no JSON object counts as the rest."""

    def __init__(self, strata: Sequence[StratumSettings] = ()) -> None:
        self.by_header: dict[str, dict[str, float]] = {}
        self.by_field: dict[str, dict[str, float]] = {}
        for st in strata:
            if st.source.startswith("$."):
                self.by_field.setdefault(st.source[2:], {})[st.value] = st.sample
            else:
                name = st.source.partition(":")[2].strip().lower()
                self.by_header.setdefault(name, {})[st.value] = st.sample
        self.max_factor = max([1.0, *(st.sample for st in strata)])

    @property
    def active(self) -> bool:
        return bool(self.by_header or self.by_field)

    def worth(self, point: float, targets: Sequence[MirrorTarget]) -> bool:
        """Whether any factor could make this point chosen (else skip reading the request)."""
        return any(point < min(1.0, t.sample * self.max_factor) for t in targets)

    def factor(self, headers: Sequence[tuple[str, str]], body: bytes = b"") -> float:
        """The request's multiplier: the first configured header found decides, else the
        configured body field."""
        for name, value in headers:
            values = self.by_header.get(name.lower())
            if values is not None:
                return values.get(value.strip(), 1.0)
        for field_name, values in self.by_field.items():
            return values.get(_body_field(body, field_name), 1.0)
        return 1.0


def _body_field(body: bytes, name: str) -> str | None:
    """A top-level field of a JSON object body as slice text (common.slice_text.value_text,
    so the stratum and the slice the report weights back agree); None when absent."""
    if not body.lstrip().startswith(b"{"):
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or name not in doc:
        return None
    return value_text(doc[name])


class Mirror:
    """Starts sampled mirrors, bounds them, and turns their ends into pair records."""

    def __init__(
        self,
        settings: ProxySettings,
        capture: Capture,
        metrics: Metrics,
        protocol: str = "auto",
        strata: Sequence[StratumSettings] = (),
        watch_sample: float = 0.0,
    ) -> None:
        self.policy = MirrorPolicy(settings, protocol)
        self.watch_sample = watch_sample
        self.watch_in_flight = 0
        self.strata = StrataPolicy(strata)
        self._limit = settings.mirror_concurrency
        self._record_failed_primary = settings.mirror_on_primary_error
        self._capture = capture
        self._metrics = metrics
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self,
        targets: Sequence[MirrorTarget],
        key: str,
        request: MirrorRequest,
        too_large: bool,
    ) -> asyncio.Future[PrimaryAnswer] | None:
        """Sample, bound and launch; the caller resolves the returned future with the
        primary's answer (None: nothing was launched, keep no copy of the answer)."""
        point = sample_point(key)
        factor = 1.0
        if targets and self.strata.active and self.strata.worth(point, targets):
            factor = self.strata.factor(request.headers, b"" if too_large else request.body)
        chosen = [t for t in targets if point < min(1.0, t.sample * factor)]
        watched = point < self.watch_sample
        if not chosen and not watched:
            return None
        arrival_s = time.time()
        ts_ms = int(arrival_s * 1000)  # the pair record's timestamp: the same bucket
        metrics, count = self._metrics, self._capture.count
        for target in chosen:
            metrics.sampled(target.name)
            count(target.name, FIELD_SAMPLED, ts_ms)
        if watched:
            metrics.watched("sampled")
            count(WATCH, FIELD_SAMPLED, ts_ms)
        if too_large:
            for target in chosen:
                self._unrecorded(target.name, MIRROR_TOO_LARGE, ts_ms)
            if watched:
                self._watch_unrecorded(MIRROR_TOO_LARGE, ts_ms)
            return None
        running = self._take_slots(chosen, ts_ms) if chosen else []
        watching = watched and self._take_watch_slot(ts_ms)
        if not running and not watching:
            return None
        loop = asyncio.get_running_loop()
        primary: asyncio.Future[PrimaryAnswer] = loop.create_future()
        task = loop.create_task(self._run(running, request, primary, arrival_s, watching))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return primary

    def start_reversed(
        self,
        target: MirrorTarget,
        key: str,
        request: MirrorRequest,
        served: CandidateResult,
        ask_primary: Callable[[], Awaitable[PrimaryAnswer]],
    ) -> bool:
        """The shadow with the roles reversed: the candidate on canary has answered the
        client (`served`); the primary is asked in the background (`ask_primary`) and the
        pair goes to the candidate's stream with `served_by` set, sides keeping their
        meaning. Sampled, counted and bounded exactly like a mirror (the same sticky point,
        rate and strata), so the accounting identity holds. True when launched."""
        point = sample_point(key)
        factor = 1.0
        if self.strata.active and self.strata.worth(point, (target,)):
            factor = self.strata.factor(request.headers, request.body)
        if point >= min(1.0, target.sample * factor):
            return False
        arrival_s = time.time()
        ts_ms = int(arrival_s * 1000)
        self._metrics.sampled(target.name)
        self._capture.count(target.name, FIELD_SAMPLED, ts_ms)
        if not self._take_slots([target], ts_ms):
            return False
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run_reversed(target, request, served, ask_primary, arrival_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run_reversed(
        self,
        target: MirrorTarget,
        request: MirrorRequest,
        served: CandidateResult,
        ask_primary: Callable[[], Awaitable[PrimaryAnswer]],
        arrival_s: float,
    ) -> None:
        try:
            answer = await _ask_primary(ask_primary)
        except asyncio.CancelledError:
            self._metrics.mirror_outcome(target.name, OUTCOME_ERROR)
            self._capture.count(target.name, FIELD_CANCELLED, int(arrival_s * 1000))
            raise
        finally:
            self.in_flight -= 1
            self._metrics.in_flight(target.name, -1)
        self._finish(target, request, answer, served, arrival_s, served_by=target.name)

    def _unrecorded(self, candidate: str, outcome: str, ts_ms: int) -> None:
        """A sampled mirror that ends without a pair: in /metrics and in the buckets."""
        self._metrics.mirror_outcome(candidate, outcome)
        self._capture.count(candidate, _UNRECORDED[outcome], ts_ms)

    def _watch_unrecorded(self, outcome: str, ts_ms: int) -> None:
        """A watched request that ends without a record: in /metrics and in the buckets."""
        self._metrics.watched(outcome)
        self._capture.count(WATCH, _UNRECORDED.get(outcome, FIELD_CANCELLED), ts_ms)

    def _take_watch_slot(self, ts_ms: int) -> bool:
        if self.watch_in_flight >= self._limit:
            self._watch_unrecorded(MIRROR_SHED, ts_ms)
            return False
        self.watch_in_flight += 1
        return True

    def _take_slots(self, chosen: list[MirrorTarget], ts_ms: int) -> list[MirrorTarget]:
        free = self._limit - self.in_flight
        running = chosen if free >= len(chosen) else chosen[: max(free, 0)]
        for target in chosen[len(running) :]:
            self._unrecorded(target.name, MIRROR_SHED, ts_ms)
        self.in_flight += len(running)
        for target in running:
            self._metrics.in_flight(target.name, 1)
        return running

    async def _run(
        self,
        targets: list[MirrorTarget],
        request: MirrorRequest,
        primary: asyncio.Future[PrimaryAnswer],
        arrival_s: float,
        watching: bool = False,
    ) -> None:
        jobs = [self._run_target(t, request, primary, arrival_s) for t in targets]
        if watching:
            jobs.append(self._run_watch(request, primary, arrival_s))
        if len(jobs) == 1:
            await jobs[0]
        else:  # each candidate ends on its own: a slow one never holds the others' slots
            await asyncio.gather(*jobs)

    async def _run_watch(
        self, request: MirrorRequest, primary: asyncio.Future[PrimaryAnswer], arrival_s: float
    ) -> None:
        """The primary-only record of a watched request, once the primary has answered."""
        ts_ms = int(arrival_s * 1000)
        try:
            answer = await primary
        except asyncio.CancelledError:
            self._metrics.watched("cancelled")
            self._capture.count(WATCH, FIELD_CANCELLED, ts_ms)
            raise
        finally:
            self.watch_in_flight -= 1
        record = PairRecord(
            request_id=request.request_id, candidate=WATCH, ts_ms=ts_ms,
            method=request.method, path=request.path, query=request.query,
            headers=self._capture.headers.select(request.headers),
            request_body=request.body, primary_status=answer.status,
            primary_ms=round(answer.elapsed_ms, 3), primary_body=answer.body,
            primary_content_type=answer.content_type,
        )  # fmt: skip
        self._capture.submit(WATCH, record)

    async def _run_target(
        self,
        target: MirrorTarget,
        request: MirrorRequest,
        primary: asyncio.Future[PrimaryAnswer],
        arrival_s: float,
    ) -> None:
        try:
            result = await _run_one(target, request)
            answer = await primary
        except asyncio.CancelledError:
            # Only at shutdown, past the drain timeout: still one outcome per sampled mirror.
            self._metrics.mirror_outcome(target.name, OUTCOME_ERROR)
            self._capture.count(target.name, FIELD_CANCELLED, int(arrival_s * 1000))
            raise
        finally:
            self.in_flight -= 1
            self._metrics.in_flight(target.name, -1)
        self._finish(target, request, answer, result, arrival_s)

    def _finish(
        self,
        target: MirrorTarget,
        request: MirrorRequest,
        answer: PrimaryAnswer,
        result: CandidateResult,
        arrival_s: float,
        served_by: str = PRIMARY_SERVED,
    ) -> None:
        if answer.failed and not self._record_failed_primary:
            self._unrecorded(target.name, MIRROR_PRIMARY_FAILED, int(arrival_s * 1000))
            return
        if result.outcome == MIRROR_SHED:  # an in-process runner's queue was full: no pair
            self._unrecorded(target.name, MIRROR_SHED, int(arrival_s * 1000))
            return
        self._metrics.mirror_outcome(target.name, result.outcome)
        if result.outcome in _ANSWERED and served_by == PRIMARY_SERVED:  # else: canary's own
            self._metrics.candidate_answered(target.name, result.elapsed_ms / 1000)
        if result.connect_ms > 0:
            self._metrics.mirror_connected(target.name)
        record = PairRecord(
            request_id=request.request_id,
            candidate=target.name,
            ts_ms=int(arrival_s * 1000),
            method=request.method,
            path=request.path,
            query=request.query,
            headers=self._capture.headers.select(request.headers),
            request_body=request.body,
            primary_status=answer.status,
            primary_ms=round(answer.elapsed_ms, 3),
            primary_body=answer.body,
            primary_content_type=answer.content_type,
            candidate_outcome=result.outcome,
            candidate_status=result.status,
            candidate_ms=round(result.elapsed_ms, 3),
            candidate_body=result.body,
            candidate_content_type=result.content_type,
            candidate_error=result.error,
            role=target.runner.role,
            served_by=served_by,
        )
        if result.outcome == OUTCOME_DISPATCHED:  # run = "dispatcher": a dispatcher calls it
            record.mode = MODE_DISPATCHER
            self._capture.submit_request(target.name, record, request.headers)
            return
        self._capture.submit(target.name, record)

    async def drain(self, timeout_s: float) -> None:
        """Wait for in-flight mirrors (at shutdown); cancel what is left after the timeout."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("cancelled %d mirrors still running at shutdown", len(pending))
            await asyncio.wait(pending, timeout=1.0)


async def _ask_primary(ask: Callable[[], Awaitable[PrimaryAnswer]]) -> PrimaryAnswer:
    """The primary's answer for a reversed shadow; a call that raises is a failed primary."""
    try:
        return await ask()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.debug("reversed shadow: asking the primary raised", exc_info=True)
        body = f"{type(exc).__name__}: {exc}"[:300].encode()
        return PrimaryAnswer(0, body, "", 0.0, failed=True)


async def _run_one(target: MirrorTarget, request: MirrorRequest) -> CandidateResult:
    """Run one candidate; a runner that raises is a candidate error, never ours."""
    try:
        return await target.runner.run(request)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a buggy runner must not break the mirror path
        log.debug("candidate %s raised", target.name, exc_info=True)
        return empty_result(OUTCOME_ERROR, f"runner raised {type(exc).__name__}: {exc}"[:500])
