"""Every Prometheus metric the proxy exposes, in one place.

Accounting (per candidate), checkable from /metrics at any quiet moment:

    shadowtrial_mirror_sampled_total
        = sum over outcome of shadowtrial_mirror_outcomes_total      (+ mirrors in flight)
    outcomes ok + http_error + timeout + error + deferred
             + dispatched                                            (handed to capture)
        = capture recorded + capture dropped                          (+ records in the spool)

`shed`, `too_large` and `primary_failed` are mirror outcomes that never reach capture.
`dispatched` (`run = "dispatcher"`): a request record for a dispatcher, `recorded` once it
is queued, `dropped` when its queue was full too (dispatch.max_queue).
Requests that are not sampled are not counted per candidate.

Several processes (`serve --workers N`): the parent points PROMETHEUS_MULTIPROC_DIR at a
fresh folder before it starts the workers, prometheus-client then keeps every value in
per-process files there, and /metrics (served by whichever worker the kernel hands the
admin connection to) sums all processes' files. Gauges use `livesum`, so a worker that
exits stops counting towards them.

Batched: the hot-path updates (requests, primary and candidate latency, mirror counts,
capture counts) are plain dict additions, applied to the prometheus-client objects once
per event-loop turn (`flush`, scheduled by the first update of a turn), and before every
scrape or read. A prometheus-client update takes a lock and, in multiprocess mode, writes
an mmap'ed file: per request that was several microseconds of the forward path.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import threading
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from common.keys import WATCH

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST

# Methods get their own label value; anything else is "OTHER" so label sets stay bounded.
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

# Mirror outcomes besides the candidate outcomes of common.records.
MIRROR_SHED = "shed"  # mirror_concurrency reached: not sent
MIRROR_TOO_LARGE = "too_large"  # request body over max_capture_bytes: not sent
MIRROR_PRIMARY_FAILED = "primary_failed"  # primary answer incomplete: not recorded

CAPTURE_RECORDED = "recorded"  # written to the candidate's stream
CAPTURE_SPOOLED = "spooled"  # had to wait for Redis (counted once per record)
CAPTURE_DROPPED = "dropped"  # spool full, or still unwritten at shutdown


def multiprocess_mode() -> bool:
    """True when values live in per-process files (set up by `serve --workers N`)."""
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The proxy's metrics on their own registry (one per app, so tests can run several).

    Hot-path callers use the `request_child` and `mirror_child` caches: resolving label
    values is the expensive part of a prometheus-client update.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "shadowtrial_requests",
            "Requests answered on the data port, by method and status class",
            ["method", "status_class"],
            registry=reg,
        )
        self.primary_latency = Histogram(
            "shadowtrial_primary_latency_seconds",
            "Time from sending the request to the primary to its last body byte",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.candidate_latency = Histogram(
            "shadowtrial_candidate_latency_seconds",
            "A mirrored candidate's time to its whole answer (2xx or not; timeouts and "
            "errors are outcomes, not latencies), new connections' setup left out",
            ["candidate"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.mirror_sampled = Counter(
            "shadowtrial_mirror_sampled",
            "Requests sampled for a candidate (eligible method/path and under its rate)",
            ["candidate"],
            registry=reg,
        )
        self.mirror_outcomes = Counter(
            "shadowtrial_mirror_outcomes",
            "What became of each sampled mirror: candidate outcome, shed, too_large, "
            "primary_failed",
            ["candidate", "outcome"],
            registry=reg,
        )
        self.mirrors_in_flight = Gauge(
            "shadowtrial_mirrors_in_flight",
            "Mirrors sent and not yet handed to capture",
            ["candidate"],
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.event_loop_lag = Histogram(
            "shadowtrial_event_loop_lag_seconds",
            "How late the proxy's event loop woke a 100 ms sleeper: time that lands inside "
            "every latency measured at that moment",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.mirror_connects = Counter(
            "shadowtrial_mirror_connections_opened",
            "New connections a mirror had to open to its candidate (their time is kept out "
            "of the candidate's latency)",
            ["candidate"],
            registry=reg,
        )
        self.capture = Counter(
            "shadowtrial_capture",
            "Pair records by capture outcome: recorded, spooled (waited for Redis), dropped",
            ["candidate", "outcome"],
            registry=reg,
        )
        self.spool_depth = Gauge(
            "shadowtrial_capture_spool_depth",
            "Pair records waiting to be written to Redis",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.redis_up = Gauge(
            "shadowtrial_capture_redis_up",
            "1 when the last write to Redis succeeded (min over processes)",
            multiprocess_mode="livemin",
            registry=reg,
        )
        self.redis_up.set(1)
        self.admin_refused = Counter(
            "shadowtrial_admin_refused",
            "Admin requests refused before a handler ran: host (not in admin.allowed_hosts),"
            " unauthorized (wrong or missing token), auth_limited (too many failures)",
            ["reason"],
            registry=reg,
        )
        self.automation_errors = Counter(
            "shadowtrial_gate_automation_errors",
            "Gate automation rounds (or one candidate's judgement) that raised; retried",
            ["error"],
            registry=reg,
        )
        self.http_refused = Counter(
            "shadowtrial_http_refused",
            "Requests refused before reaching the app: head_too_large (431), head_timeout "
            "and body_timeout (408); not in shadowtrial_requests_total",
            ["reason"],
            registry=reg,
        )
        self.body_buffer_full = Counter(
            "shadowtrial_body_buffer_full",
            "Request bodies streamed to the primary uncaptured because the process already "
            "held proxy.max_buffered_bytes of bodies being read (mirrors count too_large)",
            registry=reg,
        )
        self.watch_records = Counter(
            "shadowtrial_watch_records",
            "Watched requests ([watch] sample) by outcome: sampled, then recorded, or "
            "too_large, shed, primary_failed, cancelled, dropped (capture)",
            ["outcome"],
            registry=reg,
        )
        self._request_children: dict[tuple[str, int], Any] = {}
        self._children: dict[tuple[str, ...], Any] = {}
        self._counts: dict[Any, float] = {}  # counter/gauge child -> increment not yet applied
        self._observed: dict[Any, list[float]] = {}  # histogram child -> observations pending
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False

    def _add(self, child: Any, amount: float = 1) -> None:
        counts = self._counts
        counts[child] = counts.get(child, 0) + amount
        if not self._scheduled:
            self._schedule()

    def _observe(self, child: Any, value: float) -> None:
        pending = self._observed.get(child)
        if pending is None:
            self._observed[child] = [value]
        else:
            pending.append(value)
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test, a script): apply now
            self.flush()
            return
        self._loop = loop
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Apply the pending updates to the Prometheus objects (in the serving loop)."""
        self._scheduled = False
        counts, self._counts = self._counts, {}
        observed, self._observed = self._observed, {}
        for child, amount in counts.items():
            if amount:
                child.inc(amount)
        for child, values in observed.items():
            _observe_many(child, values)

    def _flush_from_anywhere(self) -> None:
        """`flush` in the loop that owns the pending updates, waiting for it (bounded) when
        called from another thread (tests and probes read values that way)."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            self.flush()
            return
        try:
            if asyncio.get_running_loop() is loop:
                self.flush()
                return
        except RuntimeError:
            pass
        done = threading.Event()

        def run() -> None:
            self.flush()
            done.set()

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # closed meanwhile
            return
        done.wait(1.0)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request_done(self, method: str, status: int, seconds: float | None) -> None:
        """Count one answered request; `seconds` is None when the primary never answered."""
        key = (method, status // 100)
        child = self._request_children.get(key)
        if child is None:
            label = method if method in KNOWN_METHODS else "OTHER"
            child = self.requests.labels(label, f"{status // 100}xx")
            self._request_children[key] = child
        self._add(child)
        if seconds is not None:
            self._observe(self.primary_latency, seconds)

    def sampled(self, candidate: str) -> None:
        """Count one request sampled for a candidate."""
        self._add(self._child(self.mirror_sampled, candidate))

    def mirror_outcome(self, candidate: str, outcome: str) -> None:
        """Count the final outcome of one sampled mirror."""
        self._add(self._child(self.mirror_outcomes, candidate, outcome))

    def candidate_answered(self, candidate: str, seconds: float) -> None:
        """Record one mirrored candidate's answer time."""
        self._observe(self._child(self.candidate_latency, candidate), seconds)

    def loop_lag(self, seconds: float) -> None:
        """Record one event-loop lag sample (negative jitter counts as none)."""
        self.event_loop_lag.observe(max(seconds, 0.0))

    def mirror_connected(self, candidate: str) -> None:
        """Count one new connection opened for a mirror (a cold or outgrown pool)."""
        self._add(self._child(self.mirror_connects, candidate))

    def in_flight(self, candidate: str, delta: int) -> None:
        """Track mirrors sent and not yet handed to capture."""
        self._add(self._child(self.mirrors_in_flight, candidate), delta)

    def captured(self, candidate: str, outcome: str, count: int = 1) -> None:
        """Count pair records by capture outcome (the watch's also by its own name)."""
        self._add(self._child(self.capture, candidate, outcome), count)
        if candidate == WATCH and outcome != CAPTURE_SPOOLED:
            self.watched(outcome, count)

    def watched(self, outcome: str, count: int = 1) -> None:
        """Count watched requests by outcome (shadowtrial_watch_records_total)."""
        self._add(self._child(self.watch_records, outcome), count)

    def refused(self, reason: str) -> None:
        """Count one request refused by the HTTP limits (proxy.http_limits)."""
        self._child(self.http_refused, reason).inc()

    def admin_refusal(self, reason: str) -> None:
        """Count one admin request refused at the door (control.admin_guard, control.auth)."""
        self._child(self.admin_refused, reason).inc()

    def automation_error(self, error: str) -> None:
        """Count one failed gate-automation round by exception class (a bounded set)."""
        self._child(self.automation_errors, error).inc()

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's current value in this process (0 when absent); for tests and probes."""
        self._flush_from_anywhere()
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def exposition(self) -> bytes:
        """The Prometheus text for /metrics: all processes' values in multiprocess mode."""
        self._flush_from_anywhere()
        if multiprocess_mode():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


def _observe_many(histogram: Any, values: list[float]) -> None:
    """Observe a batch: one update per bucket touched instead of one per value.

    Uses prometheus-client's histogram internals (`_upper_bounds`, `_buckets`, `_sum`);
    falls back to `observe` per value where they are not there."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for value in values:
            histogram.observe(value)
        return
    hits: dict[int, int] = {}
    for value in values:
        index = bisect.bisect_left(bounds, value)
        hits[index] = hits.get(index, 0) + 1
    total.inc(sum(values))
    for index, count in hits.items():
        buckets[index].inc(count)
